package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
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
	return []cli.Flag{
		&cli.StringFlag{Name: "api", Value: "http://127.0.0.1:8080", Usage: "any control-plane node's API", EnvVars: []string{"ZKM_API"}},
		&cli.StringFlag{Name: "token", Usage: "API token", EnvVars: []string{"ZKM_TOKEN"}},
		&cli.StringFlag{Name: "migration", Usage: "migration id (default: the only one)"},
		&cli.StringFlag{Name: "output", Value: "text", Usage: "text or json"},
	}
}

type apiClient struct {
	base, token string
	out         io.Writer
	json        bool
}

func newAPIClient(c *cli.Context) (*apiClient, error) {
	if c.String("token") == "" {
		return nil, usageError("no token: pass --token or set ZKM_TOKEN")
	}
	if o := c.String("output"); o != "text" && o != "json" {
		return nil, usageError("--output %q: want text or json", o)
	}
	return &apiClient{base: strings.TrimRight(c.String("api"), "/"), token: c.String("token"), out: c.App.Writer, json: c.String("output") == "json"}, nil
}

// do calls the API and decodes the JSON answer into v; API errors become
// exit codes scripts can rely on.
func (a *apiClient) do(method, path string, body []byte, v any) error {
	client := &http.Client{Timeout: 5 * time.Minute}
	var resp *http.Response
	var b []byte
	// A leader election answers 503 for a moment: wait it out (15 s).
	for deadline, backoff := time.Now().Add(15*time.Second), 100*time.Millisecond; ; backoff = min(2*backoff, 2*time.Second) {
		req, err := http.NewRequest(method, a.base+path, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+a.token)
		resp, err = client.Do(req)
		if err != nil {
			return fmt.Errorf("control plane at %s: %w (is `zk-migrate control` running? --api)", a.base, err)
		}
		b, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || time.Now().Add(backoff).After(deadline) {
			break
		}
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
	leader := a.leader()
	tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MIGRATION\tPHASE\tSTEP\tSTATUS\tPRIMARY\tEPOCH\tNOTE")
	for _, m := range ms {
		note := ""
		switch {
		case m.Sync.Node != "" && m.SyncProblem(leader) != "":
			note = "SYNC NOT RUNNING: " + m.SyncProblem(leader) + " (the leader restarts it; zk-migrate audit shows the gap)"
		case m.Paused:
			note = "paused (zk-migrate resume)"
		case m.Status == control.StatusAwaitingApproval:
			note = "waiting for approval (zk-migrate approve)"
		case m.Status == control.StatusSucceeded && m.Step < control.StepRemoveA:
			next := m.Step + 1
			arg := fmt.Sprint(next.Phase())
			if next == control.StepFlip {
				arg = "flip"
			}
			note = "ready: zk-migrate advance --phase " + arg + " --confirm"
		case m.Status == control.StatusFailed:
			note = "failed: " + m.LastError + " (zk-migrate retry, or rollback)"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%d\t%s\n", m.ID, m.Step.Phase(), m.Step, m.Status, m.Primary, m.Epoch, note)
	}
	tw.Flush()
}

// leader is the control-plane leader's id as the node asked knows it ("" if
// none).
func (a *apiClient) leader() string {
	var h struct {
		Leader string `json:"leader"`
	}
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(a.base + "/healthz")
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
					a.show(m)
					return nil
				}
				var ms []control.Migration
				if err := a.do(http.MethodGet, "/api/v1/migrations", nil, &ms); err != nil {
					return err
				}
				a.show(ms...)
				return nil
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
			Flags: append(apiFlags(), &cli.StringFlag{Name: "to-phase", Required: true, Usage: "0-5 or flip"}),
			Action: func(c *cli.Context) error {
				a, err := newAPIClient(c)
				if err != nil {
					return err
				}
				return a.post(c, "rollback", map[string]any{"to_phase": c.String("to-phase")})
			},
		},
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
		{
			Name: "audit", Usage: "print the audit trail (who did what, when, with what result)", Flags: apiFlags(),
			Action: func(c *cli.Context) error {
				a, err := newAPIClient(c)
				if err != nil {
					return err
				}
				var entries []control.AuditEntry
				if err := a.do(http.MethodGet, "/api/v1/audit", nil, &entries); err != nil {
					return err
				}
				if a.json { // JSON lines: one entry per line
					enc := json.NewEncoder(a.out)
					for _, e := range entries {
						if err := enc.Encode(e); err != nil {
							return err
						}
					}
					return nil
				}
				for _, e := range entries {
					fmt.Fprintf(a.out, "%s %-10s %-14s %-12s %s %s\n", e.Time.Format(time.RFC3339), e.By, e.Action, e.Migration, e.Detail, e.Result)
				}
				return nil
			},
		},
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
