package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"
	"gopkg.in/yaml.v3"

	"github.com/zk-migrate/zk-migrate/control"
)

// Exit codes of the operator commands, beyond 0/1/2.
const (
	exitRefused = 4 // the control plane refused the action now (see status)
	exitAuth    = 5 // the token is missing, unknown, or a viewer's
)

func apiFlags() []cli.Flag {
	return append([]cli.Flag{
		&cli.StringFlag{Name: "api", Value: "http://127.0.0.1:8080", Usage: "control-plane node APIs, comma-separated: the first that answers is used", EnvVars: []string{"ZKM_API"}},
		&cli.StringFlag{Name: "token", Usage: "API token", EnvVars: []string{"ZKM_TOKEN"}},
		&cli.StringFlag{Name: "migration", Usage: "migration id (default: the only one)"},
		&cli.StringFlag{Name: "output", Value: "text", Usage: "text or json"},
	}, apiTLSFlags()...)
}

type apiClient struct {
	// bases are the control nodes' API URLs; cur the one that last
	// answered (tried first).
	bases []string
	cur   int
	token string
	out   io.Writer
	json  bool
	// transport reaches an HTTPS API (--ca-cert, --client-cert); nil: the
	// default.
	transport http.RoundTripper
	// stale is why a read was answered from a follower's own state (no
	// leader reachable), or "": the leader it names may be gone.
	stale string
}

// parseAPIs splits --api into URLs.
func parseAPIs(v string) ([]string, error) {
	var out []string
	for _, u := range strings.Split(v, ",") {
		u = strings.TrimRight(strings.TrimSpace(u), "/")
		if u == "" {
			continue
		}
		if !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
			return nil, fmt.Errorf("--api %q: want http(s)://host:port[,http(s)://host:port...]", u)
		}
		out = append(out, u)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("--api is empty: give a control node's API URL (or set ZKM_API)")
	}
	return out, nil
}

func newAPIClient(c *cli.Context) (*apiClient, error) {
	if c.String("token") == "" {
		return nil, cli.Exit("no token: pass --token or set ZKM_TOKEN", exitAuth)
	}
	if o := c.String("output"); o != "text" && o != "json" {
		return nil, usageError("--output %q: want text or json", o)
	}
	bases, err := parseAPIs(c.String("api"))
	if err != nil {
		return nil, usageError("%v", err)
	}
	rt, err := apiTransport(c)
	if err != nil {
		return nil, err
	}
	return &apiClient{bases: bases, token: c.String("token"), out: c.App.Writer, json: c.String("output") == "json", transport: rt}, nil
}

// send makes one request to the first control node that answers,
// starting with the one that answered last.
func (a *apiClient) send(client *http.Client, method, path string, body []byte) (*http.Response, []byte, error) {
	var errs []string
	for i := range a.bases {
		k := (a.cur + i) % len(a.bases)
		req, err := http.NewRequest(method, a.bases[k]+path, bytes.NewReader(body))
		if err != nil {
			return nil, nil, err
		}
		req.Header.Set("Authorization", "Bearer "+a.token)
		resp, err := client.Do(req)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		a.cur = k
		return resp, b, nil
	}
	return nil, nil, fmt.Errorf("no control node answers (is `zk-migrate control` running? --api, ZKM_API): %s", strings.Join(errs, "; "))
}

// do calls the API and decodes the JSON answer into v; API errors become
// exit codes scripts can rely on.
func (a *apiClient) do(method, path string, body []byte, v any) error {
	client := &http.Client{Timeout: 5 * time.Minute, Transport: a.transport}
	var resp *http.Response
	var b []byte
	// A leader election answers 503 for a moment: wait it out (15 s).
	for deadline, backoff := time.Now().Add(15*time.Second), 100*time.Millisecond; ; backoff = min(2*backoff, 2*time.Second) {
		var err error
		resp, b, err = a.send(client, method, path, body)
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusServiceUnavailable || time.Now().Add(backoff).After(deadline) {
			break
		}
		a.cur = (a.cur + 1) % len(a.bases) // this node knows no leader: ask the next one too
		time.Sleep(backoff)
	}
	if resp.StatusCode >= 300 {
		var e struct{ Error, Hint string }
		_ = json.Unmarshal(b, &e)
		msg := e.Error
		if e.Hint != "" {
			msg += " (" + e.Hint + ")"
		}
		switch resp.StatusCode {
		case http.StatusUnauthorized, http.StatusForbidden:
			return cli.Exit(msg, exitAuth)
		case http.StatusConflict:
			return cli.Exit(msg, exitRefused)
		case http.StatusBadRequest:
			return cli.Exit(msg, exitUsage)
		}
		return fmt.Errorf("%s: %s", resp.Status, msg)
	}
	if st := resp.Header.Get("X-Zkm-Stale"); st != "" && a.stale == "" {
		a.stale = st
		fmt.Fprintln(os.Stderr, "warning: "+st)
	}
	if v != nil {
		return json.Unmarshal(b, v)
	}
	return nil
}

// migrationID is --migration, or the only migration.
func (a *apiClient) migrationID(c *cli.Context) (string, error) {
	if id := c.String("migration"); id != "" {
		return id, nil
	}
	var ms []control.Migration
	if err := a.do(http.MethodGet, "/api/v1/migrations", nil, &ms); err != nil {
		return "", err
	}
	if len(ms) != 1 {
		return "", usageError("%d migrations: name one with --migration", len(ms))
	}
	return ms[0].ID, nil
}

// nextAction says what the operator does next for m, or "".
func nextAction(m control.Migration, leader string) string {
	switch {
	case m.Sync.Node != "" && m.SyncProblem(leader) != "":
		return "SYNC NOT RUNNING: " + m.SyncProblem(leader) + " (the leader restarts it; zk-migrate audit shows the gap)"
	case m.Paused:
		return "paused (zk-migrate resume)"
	case m.Status == control.StatusAwaitingApproval:
		return "waiting for approval (zk-migrate approve)"
	case m.Status == control.StatusSucceeded && m.Step < control.StepRemoveA:
		next := m.Step + 1
		arg := fmt.Sprint(next.Phase())
		if next == control.StepFlip {
			arg = "flip"
		}
		return "ready: zk-migrate advance --phase " + arg + " --confirm"
	case m.Status == control.StatusFailed && m.ARetired:
		return "failed: " + m.LastError + " (zk-migrate retry; no rollback: the proxies were asked to retire A)"
	case m.Status == control.StatusFailed:
		return "failed: " + m.LastError + " (zk-migrate retry, or rollback)"
	case m.Status == control.StatusRollingBack:
		return "rolling back to " + m.RollbackTo.String()
	case m.Status == control.StatusCompleted:
		return "none: the migration is complete (zk-migrate report; zk-migrate delete --confirm to forget it)"
	case m.Step == control.StepNone:
		return "zk-migrate start --config migration.yaml (or delete --confirm)"
	}
	return ""
}

// show prints the migrations a command changed.
func (a *apiClient) show(ms ...control.Migration) {
	if a.json {
		enc := json.NewEncoder(a.out)
		enc.SetIndent("", "  ")
		if len(ms) == 1 {
			_ = enc.Encode(ms[0])
		} else {
			_ = enc.Encode(ms)
		}
		return
	}
	a.table(ms, nil)
}

// table prints migrations for people, with their sync when known.
func (a *apiClient) table(ms []control.Migration, syncs map[string]*syncView) {
	tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MIGRATION\tPHASE\tSTEP\tSTATUS\tPRIMARY\tEPOCH\tSYNC\tNOTE")
	leader := a.leader()
	for _, m := range ms {
		sync := "-"
		if v := syncs[m.ID]; v != nil {
			sync = v.String()
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%d\t%s\t%s\n", m.ID, m.Step.Phase(), m.Step, m.Status, m.Primary, m.Epoch, sync, nextAction(m, leader))
	}
	tw.Flush()
}

// syncView is the sync of one migration as the leader reports it
// (control/server Syncer.Status).
type syncView struct {
	Running   bool   `json:"running"`
	Problem   string `json:"problem,omitempty"`
	LagAToBMS *int64 `json:"lag_a_to_b_ms,omitempty"`
	LagBToAMS *int64 `json:"lag_b_to_a_ms,omitempty"`
	// DigestsEqual is per root; a root not yet compared is absent.
	DigestsEqual  map[string]bool   `json:"digests_equal,omitempty"`
	OpenConflicts []json.RawMessage `json:"open_conflicts,omitempty"`
}

func (v *syncView) String() string {
	if !v.Running {
		return "stopped"
	}
	out := "running"
	if v.Problem != "" {
		out += " (" + v.Problem + ")"
	}
	if v.LagAToBMS != nil && v.LagBToAMS != nil {
		out += fmt.Sprintf(" lag %d/%d ms", *v.LagAToBMS, *v.LagBToAMS)
	}
	var differ []string
	for root, eq := range v.DigestsEqual {
		if !eq {
			differ = append(differ, root)
		}
	}
	sort.Strings(differ)
	switch {
	case len(v.DigestsEqual) == 0:
		out += " digests not compared yet"
	case len(differ) > 0:
		out += " digests DIFFER on " + strings.Join(differ, ",")
	default:
		out += " digests equal"
	}
	if n := len(v.OpenConflicts); n > 0 {
		out += fmt.Sprintf(" %d open conflict(s)", n)
	}
	return out
}

// statusRow is one migration in `status --output json`: the migration
// (secrets redacted), its phase number, what to do next, and its sync.
type statusRow struct {
	control.Migration
	Phase      int    `json:"phase"`
	NextAction string `json:"next_action"`
	// LastError is always present ("" when none): the same shape for
	// every row.
	LastError string    `json:"last_error"`
	Sync      *syncView `json:"sync"`
}

// syncOf reads a migration's sync from its health detail, which holds the
// leader's per-migration sync status either at its top or under "sync".
func syncOf(id string, detail json.RawMessage) *syncView {
	var top map[string]json.RawMessage
	if json.Unmarshal(detail, &top) != nil {
		return nil
	}
	for _, m := range []map[string]json.RawMessage{top, nested(top["sync"])} {
		if raw, ok := m[id]; ok {
			var v syncView
			if err := json.Unmarshal(raw, &v); err == nil {
				return &v
			}
			return &syncView{Running: true, Problem: "sync status unreadable by this CLI (version mismatch?)"}
		}
	}
	return &syncView{Running: false}
}

func nested(raw json.RawMessage) map[string]json.RawMessage {
	var m map[string]json.RawMessage
	_ = json.Unmarshal(raw, &m)
	return m
}

// status prints the migrations with their sync; as JSON always a list.
func (a *apiClient) status(ms []control.Migration) error {
	syncs := map[string]*syncView{}
	for _, m := range ms {
		var h struct {
			Detail json.RawMessage `json:"detail"`
		}
		if err := a.do(http.MethodGet, "/api/v1/migrations/"+m.ID+"/health", nil, &h); err != nil {
			return err
		}
		syncs[m.ID] = syncOf(m.ID, h.Detail)
	}
	if !a.json {
		a.table(ms, syncs)
		return nil
	}
	rows := []statusRow{}
	leader := a.leader()
	for _, m := range ms {
		rows = append(rows, statusRow{Migration: m, Phase: m.Step.Phase(), NextAction: nextAction(m, leader), LastError: m.LastError, Sync: syncs[m.ID]})
	}
	enc := json.NewEncoder(a.out)
	enc.SetIndent("", "  ")
	return enc.Encode(rows)
}

// leader is the control-plane leader's id as the node asked knows it ("" if
// none).
func (a *apiClient) leader() string {
	if a.stale != "" { // no leader answered: the one a node still names may be dead
		return ""
	}
	var h struct {
		Leader string `json:"leader"`
	}
	client := &http.Client{Timeout: 5 * time.Second, Transport: a.transport}
	resp, err := client.Get(a.bases[a.cur] + "/healthz")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	_ = json.NewDecoder(resp.Body).Decode(&h)
	return h.Leader
}

func (a *apiClient) post(c *cli.Context, verb string, body any) error {
	id, err := a.migrationID(c)
	if err != nil {
		return err
	}
	b, _ := json.Marshal(body)
	var m control.Migration
	if err := a.do(http.MethodPost, "/api/v1/migrations/"+id+"/"+verb, b, &m); err != nil {
		return err
	}
	a.show(m)
	return nil
}

func opCommands() []*cli.Command {
	simple := func(name, usage string) *cli.Command {
		return &cli.Command{Name: name, Usage: usage, Flags: apiFlags(), Action: func(c *cli.Context) error {
			a, err := newAPIClient(c)
			if err != nil {
				return err
			}
			return a.post(c, name, struct{}{})
		}}
	}
	return []*cli.Command{
		{
			Name:  "start",
			Usage: "create a migration from migration.yaml and start phase 1",
			Description: `Creates the migration on the control plane from --config and starts phase 1
(deploy ZK B and sync). --source-zk and --target-zk override the file.

   zk-migrate start --config migration.yaml --token $ZKM_TOKEN`,
			Flags: append(apiFlags(),
				&cli.StringFlag{Name: "config", Required: true, Usage: "migration.yaml"},
				&cli.StringFlag{Name: "source-zk", Usage: "ensemble A (overrides the file)"},
				&cli.StringFlag{Name: "target-zk", Usage: "ensemble B (overrides the file)"}),
			Action: func(c *cli.Context) error {
				a, err := newAPIClient(c)
				if err != nil {
					return err
				}
				raw, err := os.ReadFile(c.String("config"))
				if err != nil {
					return usageError("--config: %v", err)
				}
				cfg, err := overrideEnsembles(raw, c.String("source-zk"), c.String("target-zk"))
				if err != nil {
					return usageError("%s: %v", c.String("config"), err)
				}
				body, err := yaml.Marshal(cfg) // the API takes migration.yaml
				if err != nil {
					return err
				}
				var m control.Migration
				if err := a.do(http.MethodPost, "/api/v1/migrations", body, &m); err != nil {
					return err
				}
				if err := a.do(http.MethodPost, "/api/v1/migrations/"+m.ID+"/start", nil, &m); err != nil {
					return err
				}
				a.show(m)
				return nil
			},
		},
		{
			Name: "status", Usage: "show migrations: phase, status, primary ensemble, what to do next", Flags: apiFlags(),
			Action: func(c *cli.Context) error {
				a, err := newAPIClient(c)
				if err != nil {
					return err
				}
				if id := c.String("migration"); id != "" {
					var m control.Migration
					if err := a.do(http.MethodGet, "/api/v1/migrations/"+id, nil, &m); err != nil {
						return err
					}
					return a.status([]control.Migration{m})
				}
				var ms []control.Migration
				if err := a.do(http.MethodGet, "/api/v1/migrations", nil, &ms); err != nil {
					return err
				}
				return a.status(ms)
			},
		},
		{
			Name: "advance", Usage: "enter the next phase (1-6, or flip between 1 and 2)",
			Description: "   zk-migrate advance --phase flip --confirm\n   zk-migrate advance --phase 2 --confirm",
			Flags: append(apiFlags(), &cli.StringFlag{Name: "phase", Required: true, Usage: "1-6 or flip"},
				&cli.BoolFlag{Name: "confirm", Usage: "required: advancing changes production"}),
			Action: func(c *cli.Context) error {
				a, err := newAPIClient(c)
				if err != nil {
					return err
				}
				if !c.Bool("confirm") {
					return usageError("advancing changes production: repeat with --confirm")
				}
				return a.post(c, "advance", map[string]any{"phase": c.String("phase"), "confirm": true})
			},
		},
		{
			Name: "rollback", Usage: "undo phases down to an earlier one (0: before phase 1)",
			Description: `Undoes phases newest first. A rollback that crosses the flip (from the flip
or later to phase 1 or 0) changes the primary ensemble and needs --confirm.

   zk-migrate rollback --to-phase 2
   zk-migrate rollback --to-phase 1 --confirm`,
			Flags: append(apiFlags(), &cli.StringFlag{Name: "to-phase", Required: true, Usage: "0-5 or flip"},
				&cli.BoolFlag{Name: "confirm", Usage: "required when the rollback crosses the flip"}),
			Action: func(c *cli.Context) error {
				a, err := newAPIClient(c)
				if err != nil {
					return err
				}
				return a.post(c, "rollback", map[string]any{"to_phase": c.String("to-phase"), "confirm": c.Bool("confirm")})
			},
		},
		{
			Name: "delete", Usage: "forget a finished, never started or rolled-back-to-0 migration",
			Description: `Removes the migration from the control plane (its audit trail stays). An
active migration cannot be deleted: roll it back to 0 first. The same id
can then be used again; its flip epochs continue above the old ones.

   zk-migrate delete --migration prod-2026 --confirm`,
			Flags: append(apiFlags(), &cli.BoolFlag{Name: "confirm", Usage: "required: the migration's state is forgotten"}),
			Action: func(c *cli.Context) error {
				a, err := newAPIClient(c)
				if err != nil {
					return err
				}
				if !c.Bool("confirm") {
					return usageError("deleting forgets the migration's state: repeat with --confirm")
				}
				id, err := a.migrationID(c)
				if err != nil {
					return err
				}
				if err := a.do(http.MethodDelete, "/api/v1/migrations/"+id, []byte(`{"confirm":true}`), nil); err != nil {
					return err
				}
				fmt.Fprintf(a.out, "deleted %s\n", id)
				return nil
			},
		},
		nodeCommand(),
		{
			Name: "report", Usage: "the post-migration report: each phase's duration, failures, approvals, the flip", Flags: apiFlags(),
			Action: func(c *cli.Context) error {
				a, err := newAPIClient(c)
				if err != nil {
					return err
				}
				id, err := a.migrationID(c)
				if err != nil {
					return err
				}
				var rep control.Report
				if err := a.do(http.MethodGet, "/api/v1/migrations/"+id+"/report", nil, &rep); err != nil {
					return err
				}
				if a.json {
					return json.NewEncoder(a.out).Encode(rep)
				}
				rep.Print(a.out)
				return nil
			},
		},
		simple("approve", "let the phase waiting for approval run"),
		simple("pause", "stop the executor between actions"),
		simple("resume", "continue a paused migration"),
		simple("retry", "run a failed phase again"),
		auditCommand(),
	}
}

// overrideEnsembles applies --source-zk/--target-zk before validation.
func overrideEnsembles(raw []byte, source, target string) (*control.Config, error) {
	cfg, err := control.DecodeConfig(raw)
	if err != nil {
		return nil, err
	}
	if source != "" {
		cfg.Migration.SourceZK = source
	}
	if target != "" {
		cfg.Migration.TargetZK = target
	}
	return cfg, cfg.Validate()
}
