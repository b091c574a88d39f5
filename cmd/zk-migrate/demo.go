package main

import (
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/zk-migrate/zk-migrate/sandbox"
)

func demoCommand() *cli.Command {
	return &cli.Command{
		Name:  "demo",
		Usage: "migrate an emulated Mesos cluster from ZooKeeper A to B through the control plane, and report what it measured",
		Description: `What 'make demo' runs. On this machine: two real three-server ZooKeeper
ensembles A and B (Debian's zookeeper package: run 'make deps' first), zk-migrate
proxies in two-ensemble mode, a control plane of three 'zk-migrate control'
nodes, and an emulated Mesos cluster (bin/mesos-sim: masters, agents and a
framework keeping tasks running, reaching ZooKeeper through the proxies with
the real C client). The control plane then runs the migration: phase 1 (sync
A to B), the flip, phases 2 to 5 (masters one for one, agents on B, A's
agents drained) and phase 6, with the local deployer starting and stopping
the Mesos processes. With --rollback N it rolls back to phase 1 once phase N
has succeeded. With --chaos the faults are injected as each --chaos-at
moment begins (default phase 2). The report gives each phase's time, the write pause at the
flip, the sync lag, and the guarantees: tasks failed 0, sessions expired 0,
only the planned leader changes, digests of A and B equal, and a register
written through every proxy linearizable (porcupine; its history is kept as
register.jsonl in --dir).

Every process's log is kept in --dir (a new temp directory by default).

Exit status: 0 when every guarantee held, 1 otherwise, 2 on bad flags.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "mesos-sim", Usage: "the Mesos emulator binary (default: mesos-sim beside this binary, as make build puts it)"},
			&cli.IntFlag{Name: "rollback", Usage: "roll back to phase 1 once this phase (2-5) has succeeded (0: migrate to the end)"},
			&cli.IntFlag{Name: "agents", Value: 3, Usage: "Mesos agents on each side"},
			&cli.IntFlag{Name: "tasks", Value: 10, Usage: "tasks the framework keeps running"},
			&cli.IntFlag{Name: "proxies", Value: 3, Usage: "zk-migrate proxies in front of the Mesos processes"},
			&cli.DurationFlag{Name: "zk-session-timeout", Value: 10 * time.Second, Usage: "the Mesos processes' ZooKeeper session timeout (Mesos' default is 10s)"},
			&cli.StringSliceFlag{Name: "chaos", Usage: "faults injected at each --chaos-at moment: zk (SIGKILL the ZooKeeper leader of A and of B, restarted after 3s), control (SIGKILL the control-plane leader, restarted from its data dir after 5s), proxy (SIGKILL the framework host's proxy, restarted after 1s), partition (cut that proxy from B for 4s), delay (every proxy's traffic with B delayed by 50ms from then on); comma-separated"},
			&cli.StringSliceFlag{Name: "chaos-at", Value: cli.NewStringSlice("2"), Usage: "when the --chaos faults are injected, each once as that step begins: any of flip,2,3,4,5,rollback (phases above --rollback never run; rollback needs --rollback); a fault still under way from an earlier moment is not injected again; comma-separated"},
			&cli.BoolFlag{Name: "short", Usage: "a smaller cluster for CI: 1 agent a side, 4 tasks, 2 proxies"},
			&cli.StringFlag{Name: "dir", Usage: "directory for logs, control-plane data and migration.yaml (default: a new temp directory)"},
		},
		Action: func(c *cli.Context) error {
			self, err := os.Executable()
			if err != nil {
				return fmt.Errorf("demo: %w", err)
			}
			cfg := sandbox.MigrationConfig{ZkMigrate: self, MesosSim: c.String("mesos-sim"), Dir: c.String("dir"),
				Agents: c.Int("agents"), Tasks: c.Int("tasks"), Proxies: c.Int("proxies"), RollbackAt: c.Int("rollback"), Chaos: c.StringSlice("chaos"), ChaosAt: c.StringSlice("chaos-at"),
				SessionTimeout: c.Duration("zk-session-timeout")}
			if cfg.MesosSim == "" {
				cfg.MesosSim = filepath.Join(filepath.Dir(self), "mesos-sim")
			}
			if c.Bool("short") {
				cfg.Agents, cfg.Tasks, cfg.Proxies = 1, 4, 2
			}
			if r := cfg.RollbackAt; r != 0 && (r < 2 || r > 5) {
				return usageError("--rollback %d: give a phase from 2 to 5 (the phases that move Mesos processes), or 0", r)
			}
			for _, f := range cfg.Chaos {
				if !slices.Contains(sandbox.Faults, f) {
					return usageError("--chaos %q: want any of %s (comma-separated)", f, strings.Join(sandbox.Faults, ","))
				}
			}
			if err := sandbox.CheckChaosAt(cfg.ChaosAt, cfg.RollbackAt); err != nil {
				return usageError("--chaos-at: %v", err)
			}
			if cfg.Agents < 1 || cfg.Tasks < 1 || cfg.Proxies < 1 {
				return usageError("--agents, --tasks and --proxies must be at least 1")
			}
			if cfg.SessionTimeout < 2*time.Second {
				return usageError("--zk-session-timeout %v: give at least 2s", cfg.SessionTimeout)
			}
			if _, err := os.Stat(cfg.MesosSim); err != nil {
				return usageError("--mesos-sim: %v (build it with make build, or give its path)", err)
			}
			if cfg.Dir != "" {
				if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
					return fmt.Errorf("demo: %w", err)
				}
			}
			ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			rep, err := sandbox.Migrate(ctx, cfg, os.Stdout)
			if err != nil {
				if rep.Dir != "" {
					return fmt.Errorf("demo: %w (logs of every process: %s)", err, rep.Dir)
				}
				return fmt.Errorf("demo: %w", err)
			}
			if !rep.OK() {
				return fmt.Errorf("demo: a guarantee did not hold (see the report above)")
			}
			return nil
		},
	}
}
