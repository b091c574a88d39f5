package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/urfave/cli/v2"

	"github.com/zk-migrate/zk-migrate/control"
	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/membership"
	"github.com/zk-migrate/zk-migrate/replicator"
	"github.com/zk-migrate/zk-migrate/tlsconf"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// Exit codes of sync and validate, beyond 0/1/2 (4 and 5 are the
// operator commands').
const (
	// exitDifferent: the ensembles differ (validate), or the copy does not
	// verify (sync --once).
	exitDifferent = 3
	// exitUnverifiable: ZooKeeper hides digest ACLs from the replicator's
	// credentials, or they may not read some znodes at all (NOAUTH), so
	// those can be neither copied (sync writes nothing) nor proved equal
	// (validate).
	exitUnverifiable = 6
)

func ensembleFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "source", Usage: "ensemble A, host:port,host:port,... (required)", EnvVars: []string{"ZKM_SOURCE"}},
		&cli.StringFlag{Name: "target", Usage: "ensemble B, host:port,host:port,... (required)", EnvVars: []string{"ZKM_TARGET"}},
		&cli.StringFlag{Name: "paths", Value: "/mesos", Usage: "subtrees to sync, comma-separated (e.g. /mesos,/marathon)"},
		&cli.StringSliceFlag{Name: "auth", Usage: "credentials used on both ensembles, scheme:secret (digest:user:password); the ACLs must grant them what the copy needs. Visible in ps: prefer --auth-file or " + syncAuthEnv},
		authFileFlag(),
		&cli.IntFlag{Name: "readers", Value: 4, Usage: "sessions reading each side in parallel"},
		&cli.StringFlag{Name: "tls-ca", Usage: "connect to both ensembles' secureClientPort over TLS, verifying the servers against this CA (PEM)", EnvVars: []string{"ZKM_ZK_TLS_CA"}},
		&cli.StringFlag{Name: "tls-cert", Usage: "client certificate for the ensembles (PEM; needed when the servers set ssl.clientAuth=need)", EnvVars: []string{"ZKM_ZK_TLS_CERT"}},
		&cli.StringFlag{Name: "tls-key", Usage: "the key of --tls-cert (PEM)", EnvVars: []string{"ZKM_ZK_TLS_KEY"}},
	}
}

type ensembleArgs struct {
	source, target []string
	paths          []string
	auth           []zkclient.Auth
	readers        int
	// tls, if set, is the TLS configuration of each connection.
	tls func(serverName string) *tls.Config
}

func parseEnsembleArgs(c *cli.Context) (ensembleArgs, error) {
	var a ensembleArgs
	var err error
	if c.String("source") == "" || c.String("target") == "" {
		return a, fmt.Errorf("--source and --target are required (the two ensembles, host:port,...)")
	}
	if a.source, err = parseUpstream(c.String("source")); err != nil {
		return a, fmt.Errorf("--source: %v", err)
	}
	if a.target, err = parseUpstream(c.String("target")); err != nil {
		return a, fmt.Errorf("--target: %v", err)
	}
	for _, p := range strings.Split(c.String("paths"), ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		if !strings.HasPrefix(p, "/") || p == "/" || strings.HasSuffix(p, "/") {
			return a, fmt.Errorf("--paths %q: want absolute znode paths below the root, like /mesos", p)
		}
		a.paths = append(a.paths, p)
	}
	if len(a.paths) == 0 {
		return a, fmt.Errorf("--paths is empty: give the subtrees to sync, like /mesos")
	}
	if a.auth, err = loadAuth(c); err != nil {
		return a, err
	}
	if a.readers = c.Int("readers"); a.readers < 1 || a.readers > 64 {
		return a, fmt.Errorf("--readers %d: want 1 to 64", a.readers)
	}
	if ca, cert, key := c.String("tls-ca"), c.String("tls-cert"), c.String("tls-key"); ca != "" || cert != "" || key != "" {
		if ca == "" {
			return a, fmt.Errorf("--tls-cert/--tls-key need --tls-ca (the CA of the ensembles' certificates)")
		}
		f, err := tlsconf.Load(tlsconf.Paths{Cert: cert, Key: key, CA: ca})
		if err != nil {
			return a, err
		}
		a.tls = f.ClientConfig
	}
	return a, nil
}

// dialer is the replicator's way to the two ensembles.
func (a ensembleArgs) dialer() replicator.Dialer {
	return replicator.Dialer{Ensembles: [2][]string{a.source, a.target}, Auth: a.auth, TLS: a.tls}
}

func (a ensembleArgs) endpoints(ctx context.Context) (replicator.Endpoints, func(), error) {
	return a.dialer().Endpoints(ctx, a.readers)
}

func syncCommand() *cli.Command {
	flags := append(ensembleFlags(),
		&cli.BoolFlag{Name: "once", Usage: "copy and verify once, then exit (no continuous sync)"},
		&cli.StringFlag{Name: "conflict", Value: replicator.LastWriteWins, Usage: "what to do with a znode changed on both sides: last-write-wins or manual"},
		&cli.StringFlag{Name: "audit-log", Usage: "append conflicts and alerts to this file as hash-chained JSON lines (zk-migrate audit verify --file checks it; default: plain lines on stderr)"},
		&cli.IntFlag{Name: "audit-log-max-mb", Value: 100, Usage: "rotate --audit-log when it would grow past this size (FILE.1 is the newest rotated file)"},
		&cli.IntFlag{Name: "audit-log-keep", Value: 10, Usage: "rotated --audit-log files to keep; older ones are deleted"},
		&cli.IntFlag{Name: "lag-threshold-ms", Value: 50, Usage: "alert when sync lag stays above this"},
		&cli.StringFlag{Name: "primary", Usage: "the primary of two-ensemble proxies dual-writing these paths (source or target): their mirror's writes and shadow-owned ephemerals are left to them (default: none, no proxy dual-writes)"},
		&cli.DurationFlag{Name: "mirror-grace", Value: 5 * time.Second, Usage: "with --primary: how long a difference must persist, the primary unchanged, before it is taken as a write that bypassed the proxies (above the proxies' longest mirror pass, a shadow session's re-attach included)"},
		&cli.StringFlag{Name: "metrics-addr", Value: "127.0.0.1:9405", Usage: "Prometheus /metrics address (empty: off)"},
		&cli.StringFlag{Name: "gossip-addr", Usage: "join the control plane's gossip pool on host:port (advertises the lag)"},
		&cli.StringSliceFlag{Name: "gossip-join", Usage: "gossip members to join, host:port (repeatable)"},
		gossipKeyFlag(),
		gossipInsecureFlag(),
	)
	return &cli.Command{
		Name:  "sync",
		Usage: "copy subtrees from ensemble A to B, prove it, and keep both in sync",
		Description: `Phase 1 of a migration: make ensemble B an exact copy of A and keep it one.

1. Snapshot: reads the subtrees on A and B with pipelined requests, writes the
   difference to B in batched transactions (parents first, sequential names
   as they are, restrictive ACLs after the subtree exists, ephemerals owned by
   the replicator's session), then raises every sequential parent's counter on
   B to A's. An interrupted copy resumes where it stopped.
2. Verify: digests of both sides must be equal.
3. Continuous (without --once): watches both ensembles and copies changes in
   both directions, including writes that bypass the proxies. A znode changed
   on both sides is a conflict (see --conflict), logged to --audit-log.
   Beside two-ensemble proxies, give their --primary: what their mirror
   writes to the secondary (and the ephemerals their shadow sessions own
   there) is left to them, never copied back and never a conflict; a
   difference that persists --mirror-grace with the primary unchanged is a
   write that bypassed the proxies, and is copied.

Example:

   zk-migrate sync --source zka1:2181,zka2:2181,zka3:2181 \
       --target zkb1:2181,zkb2:2181,zkb3:2181 --paths /mesos,/marathon \
       --auth-file /etc/zk-migrate/sync.auth

Credentials: --auth-file (one scheme:secret a line, mode 600) or
ZKM_SYNC_AUTH keep the password out of ps; --auth shows it there (warned).

ACLs: ZooKeeper 3.6+ hides the password hash of digest ACLs (user:x) from a
client without ADMIN permission on the znode. Such an ACL cannot be copied
without locking its owner out on B, so sync refuses before writing anything,
lists every such znode on A and B, and exits 6. Give --auth the identity that
owns them (digest:mesos:secret), or the ensembles' super digest. The same
holds for znodes whose ACL does not let --auth read them at all (NOAUTH):
all are listed, nothing is written, exit 6.

TLS: with --tls-ca (and --tls-cert/--tls-key when the servers require client
certificates, ssl.clientAuth=need) every connection to both ensembles is TLS
1.2+ to their secureClientPort; the files are reloaded when they change.

Exit status: 0 done (--once) or stopped by a signal, 1 error, 2 usage,
3 the copy did not verify, 6 ACLs hidden from --auth or znodes it may not
read (nothing written).`,
		Flags:  flags,
		Action: runSync,
	}
}

func runSync(c *cli.Context) error {
	args, err := parseEnsembleArgs(c)
	if err != nil {
		return usageError("%v", err)
	}
	if c.Int("audit-log-max-mb") < 1 || c.Int("audit-log-keep") < 1 {
		return usageError("--audit-log-max-mb %d, --audit-log-keep %d: want at least 1 each", c.Int("audit-log-max-mb"), c.Int("audit-log-keep"))
	}
	strategy := c.String("conflict")
	if strategy != replicator.LastWriteWins && strategy != replicator.Manual {
		return usageError("--conflict %q: want last-write-wins or manual", strategy)
	}
	var gkey []byte // checked before anything runs: a usage error after a snapshot copy is too late
	if c.String("gossip-addr") != "" {
		if gkey, err = gossipKey(c); err != nil {
			return err
		}
	}
	var primary ensemble.Name
	if p := c.String("primary"); p != "" {
		if primary, err = ensemble.Parse(p); err != nil {
			return usageError("--primary: %v", err)
		}
	}
	if c.Duration("mirror-grace") <= 0 {
		return usageError("--mirror-grace %v: want a positive duration (above the proxies' mirror delay)", c.Duration("mirror-grace"))
	}
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	reg := prometheus.NewRegistry()
	metrics := replicator.NewMetrics(reg)
	if addr := c.String("metrics-addr"); addr != "" {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("metrics listen on %s: %w (choose another --metrics-addr, or empty)", addr, err)
		}
		srv := &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
	}
	ep, closeAll, err := args.endpoints(ctx)
	if err != nil {
		return err
	}
	defer closeAll()

	out := c.App.Writer
	var prog replicator.Progress
	done := make(chan struct{})
	go reportProgress(out, &prog, metrics, done)
	// Beside dual-writing proxies (--primary), a client's ephemeral on the
	// target is its shadow session's: the copy leaves its owner alone.
	res, err := replicator.Sync(ctx, ep, args.paths, replicator.Options{Progress: &prog, KeepForeignEphemerals: primary != ""})
	close(done)
	var hidden *replicator.UnreadableACLError
	if errors.As(err, &hidden) {
		return cli.Exit("snapshot copy refused, nothing written: "+err.Error(), exitUnverifiable)
	}
	if err != nil {
		return fmt.Errorf("snapshot copy: %w (run the same command again: it resumes)", err)
	}
	fmt.Fprintf(out, "copied %d znodes (%s) in %v: %d created, %d updated, %d deleted, %d ACLs, %d sequence counters raised\n",
		res.Nodes, mb(res.Bytes), res.Elapsed.Round(time.Millisecond), res.Created, res.Updated, res.Deleted, res.ACLsSet, res.PaddedParents)
	verdicts, err := replicator.Validate(ctx, ep, args.paths, 10)
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	switch equal, different := printVerdicts(out, verdicts, 0); {
	case different && c.Bool("once"):
		return cli.Exit("the copy does not verify (something is writing to B, or to A without a proxy: run without --once to keep syncing)", exitDifferent)
	case !equal && !different:
		return cli.Exit("the copy cannot be verified: ZooKeeper hides ACLs of B from --auth (see above)", exitUnverifiable)
	}
	if c.Bool("once") {
		return nil
	}
	closeAll()
	audit := io.Writer(os.Stderr)
	if p := c.String("audit-log"); p != "" {
		f, err := control.OpenAuditLog(p, "sync", int64(c.Int("audit-log-max-mb"))<<20, c.Int("audit-log-keep"))
		if err != nil {
			return fmt.Errorf("--audit-log: %w", err)
		}
		defer f.Close()
		audit = f
	}
	log, _ := newLogger("info")
	cont, err := replicator.NewContinuous(replicator.ContinuousConfig{
		Dial: args.dialer().Dial, Roots: args.paths, Strategy: strategy, Audit: audit, Metrics: metrics, Logger: log,
		LagThreshold: time.Duration(c.Int("lag-threshold-ms")) * time.Millisecond,
		Primary:      primary, MirrorGrace: c.Duration("mirror-grace"),
	})
	if err != nil {
		return usageError("%v", err)
	}
	var agent *membership.Agent
	if addr := c.String("gossip-addr"); addr != "" {
		host, _ := os.Hostname()
		if agent, err = membership.Join(membership.Config{Name: "replicator-" + host, BindAddr: addr, SecretKey: gkey,
			Seeds: c.StringSlice("gossip-join"), Meta: membership.Meta{Role: membership.RoleReplicator}}); err != nil {
			return err
		}
		defer agent.Leave()
	}
	fmt.Fprintln(out, "continuous sync running in both directions (Ctrl-C to stop)")
	go func() {
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				ab, ba := cont.Lag()
				if agent != nil {
					_ = agent.SetMeta(func(m *membership.Meta) { m.LagMS = max(ab, ba).Milliseconds() })
				}
				fmt.Fprintf(out, "lag A->B %v, B->A %v, open conflicts %d, znodes not copied (ACL hidden) %d\n",
					ab.Round(100*time.Microsecond), ba.Round(100*time.Microsecond), len(cont.Conflicts()), len(cont.Unreadable()))
			}
		}
	}()
	_ = cont.Run(ctx)
	return nil
}

func mb(b int64) string { return fmt.Sprintf("%.1f MB", float64(b)/(1<<20)) }

// reportProgress prints a line a second while the snapshot runs.
func reportProgress(out io.Writer, p *replicator.Progress, m *replicator.Metrics, done <-chan struct{}) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	start := time.Now()
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		read, written, planned := p.SourceNodes.Load(), p.Written.Load(), p.Planned.Load()
		m.SnapshotNodes.Set(float64(read))
		m.SnapshotWritten.Set(float64(written))
		el := time.Since(start).Seconds()
		line := fmt.Sprintf("read %d znodes on A (%s), %d on B", read, mb(p.SourceBytes.Load()), p.TargetNodes.Load())
		if planned > 0 {
			rate := float64(written) / el
			eta := "?"
			if rate > 0 {
				eta = (time.Duration(float64(planned-written)/rate) * time.Second).Round(time.Second).String()
			}
			line += fmt.Sprintf("; wrote %d/%d (%.0f/s, ETA %s)", written, planned, rate, eta)
		}
		fmt.Fprintln(out, line)
	}
}

// printVerdicts prints each subtree's verdict, listing up to max znodes
// with hidden ACLs (0: all). equal: every subtree proved equal; different:
// some subtree known to differ.
func printVerdicts(out io.Writer, vs []replicator.Verdict, max int) (equal, different bool) {
	equal = true
	for _, v := range vs {
		if v.Equal {
			fmt.Fprintf(out, "%s: equal (%d znodes, digest %s)\n", v.Root, v.SourceNodes, v.SourceDigest[:16])
			continue
		}
		equal = false
		if v.Different() {
			different = true
			fmt.Fprintf(out, "%s: DIFFERENT (A %d znodes, digest %s; B %d znodes, digest %s)\n", v.Root, v.SourceNodes, v.SourceDigest[:16], v.TargetNodes, v.TargetDigest[:16])
			for _, d := range v.Differences {
				fmt.Fprintf(out, "  %s\n", d)
			}
		} else {
			fmt.Fprintf(out, "%s: CANNOT VERIFY (A %d znodes, B %d znodes; no difference found, but ACLs are hidden or znodes unreadable)\n", v.Root, v.SourceNodes, v.TargetNodes)
		}
		if len(v.Unverifiable) > 0 {
			fmt.Fprintln(out, "  "+strings.ReplaceAll(replicator.DescribeUnreadable(v.Unverifiable, max), "\n", "\n  "))
		}
	}
	return equal, different
}

func validateCommand() *cli.Command {
	return &cli.Command{
		Name:  "validate",
		Usage: "compare subtrees of two ensembles by digest",
		Description: `Two modes.

With --source and --target: reads the subtrees on both ensembles and
compares digests covering every znode's path, data, ACL, ephemeral-ness and
children (not zxids, times, owners or versions, which two ensembles never
share). When they differ, the first differing paths are printed. A znode
whose digest ACL ZooKeeper hides from --auth (user:x: no ADMIN permission on
it), or that --auth may not read at all (NOAUTH: no READ permission), cannot
be verified: it is never reported equal (exit 6), and the fix is printed.

With --phase current: asks the control plane whether the current phase is
healthy (not failed; in phase 1 also equal digests and no open conflict;
from phase 1 to phase 6 the sync must run and replicate on the leader).

Exit status: 0 equal/healthy, 3 different/unhealthy, 6 cannot verify
(ACLs hidden from --auth; 3 wins when something also differs), 1 error,
2 usage.`,
		Flags: append(append(ensembleFlags(),
			&cli.IntFlag{Name: "max-diffs", Value: 20, Usage: "differences to list per subtree"},
			&cli.StringFlag{Name: "phase", Usage: "current: check the migration's current phase on the control plane"},
			&cli.StringFlag{Name: "api", Value: "http://127.0.0.1:8080", Usage: "control plane API (with --phase)", EnvVars: []string{"ZKM_API"}},
			&cli.StringFlag{Name: "token", Usage: "API token (with --phase)", EnvVars: []string{"ZKM_TOKEN"}},
			&cli.StringFlag{Name: "migration", Usage: "migration id (with --phase; default: the only one)"}),
			append([]cli.Flag{&cli.StringFlag{Name: "output", Value: "text", Usage: "text or json"}}, apiTLSFlags()...)...),
		Action: func(c *cli.Context) error {
			if p := c.String("phase"); p != "" {
				if p != "current" {
					return usageError("--phase %q: only current is supported", p)
				}
				return validateCurrentPhase(c)
			}
			args, err := parseEnsembleArgs(c)
			if err != nil {
				return usageError("%v", err)
			}
			if o := c.String("output"); o != "text" && o != "json" {
				return usageError("--output %q: want text or json", o)
			}
			ep, closeAll, err := args.endpoints(c.Context)
			if err != nil {
				return err
			}
			defer closeAll()
			vs, err := replicator.Validate(c.Context, ep, args.paths, c.Int("max-diffs"))
			if err != nil {
				return err
			}
			var equal, different bool
			if c.String("output") == "json" {
				enc := json.NewEncoder(c.App.Writer)
				enc.SetIndent("", "  ")
				_ = enc.Encode(vs)
				equal, different = printVerdicts(io.Discard, vs, 0)
			} else {
				equal, different = printVerdicts(c.App.Writer, vs, c.Int("max-diffs"))
			}
			switch {
			case different:
				return cli.Exit("", exitDifferent)
			case !equal:
				return cli.Exit("", exitUnverifiable)
			}
			return nil
		},
	}
}

// validateCurrentPhase asks the control plane for the migration's health.
func validateCurrentPhase(c *cli.Context) error {
	a, err := newAPIClient(c)
	if err != nil {
		return err
	}
	id, err := a.migrationID(c)
	if err != nil {
		return err
	}
	var h struct {
		Migration control.Migration `json:"migration"`
		Healthy   bool              `json:"healthy"`
		Problem   string            `json:"sync_problem"`
		Detail    json.RawMessage   `json:"detail"`
	}
	if err := a.do(http.MethodGet, "/api/v1/migrations/"+id+"/health", nil, &h); err != nil {
		return err
	}
	healthy := h.Healthy
	if h.Migration.Step == control.StepDeployB && h.Migration.Status != control.StatusSucceeded {
		healthy = false // phase 1 is healthy once it verified
	}
	if a.json {
		_ = json.NewEncoder(a.out).Encode(map[string]any{"healthy": healthy, "migration": h.Migration, "sync_problem": h.Problem, "detail": h.Detail})
	} else {
		verdict := "healthy"
		if !healthy {
			verdict = "NOT healthy"
		}
		fmt.Fprintf(a.out, "%s: phase %d (%s) %s: %s\n", id, h.Migration.Step.Phase(), h.Migration.Step, h.Migration.Status, verdict)
		if h.Problem != "" {
			fmt.Fprintf(a.out, "  sync: %s\n", h.Problem)
		}
		if h.Migration.LastError != "" {
			fmt.Fprintf(a.out, "  last error: %s\n", h.Migration.LastError)
		}
		if len(h.Detail) > 0 && string(h.Detail) != "null" {
			fmt.Fprintf(a.out, "  detail: %s\n", h.Detail)
		}
	}
	if !healthy {
		return cli.Exit("", exitDifferent)
	}
	return nil
}
