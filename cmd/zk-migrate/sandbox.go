package main

import (
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/zk-migrate/zk-migrate/sandbox"
)

func sandboxCommand() *cli.Command {
	return &cli.Command{
		Name:  "sandbox",
		Usage: "run the local demonstration: real ZooKeeper A and B, proxies, Mesos-shaped load, sync, server kills",
		Description: `Starts a real three-server ZooKeeper ensemble on loopback (Debian's
zookeeper package; run 'make deps' first), one zk-migrate proxy per emulated
Mesos host, and load shaped like Mesos: masters contending with ephemeral
sequential json.info_ nodes, agents following the lowest, writers updating
counters, and a second ensemble B kept a copy of A by continuous sync.
While it runs, ZooKeeper servers of A are killed with SIGKILL and restarted.
Progress is printed every second; the final report must show zero expired
sessions, zero leader changes, zero lost acknowledged writes, and B equal
to A by digest.
The load comes from Go ZooKeeper clients shaped like Mesos, not from Mesos.

Exit status: 0 when every guarantee held, 1 otherwise.`,
		Flags: []cli.Flag{
			&cli.DurationFlag{Name: "duration", Value: 30 * time.Second, Usage: "how long to run the load"},
			&cli.IntFlag{Name: "hosts", Value: 3, Usage: "emulated Mesos hosts (one proxy and one master each)"},
			&cli.IntFlag{Name: "agents", Value: 3, Usage: "agents per host"},
			&cli.IntFlag{Name: "kills", Value: 2, Usage: "ZooKeeper servers to kill during the run (0: none)"},
			&cli.BoolFlag{Name: "verbose", Usage: "print the proxies' and the replicator's logs"},
			&cli.BoolFlag{Name: "no-sync", Usage: "leave out ensemble B and the sync"},
		},
		Action: func(c *cli.Context) error {
			if c.Duration("duration") < 5*time.Second {
				return usageError("--duration %v: give at least 5s so faults and recovery fit", c.Duration("duration"))
			}
			if c.Int("hosts") < 1 || c.Int("agents") < 0 || c.Int("kills") < 0 {
				return usageError("--hosts must be at least 1, --agents and --kills at least 0")
			}
			var logger *slog.Logger
			if c.Bool("verbose") {
				logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
			}
			ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			rep, err := sandbox.Run(ctx, sandbox.Config{
				Duration: c.Duration("duration"), Hosts: c.Int("hosts"), Agents: c.Int("agents"),
				Kills: c.Int("kills"), Logger: logger, NoSync: c.Bool("no-sync"),
			}, os.Stdout)
			if err != nil {
				return fmt.Errorf("sandbox: %w", err)
			}
			if !rep.OK() {
				return fmt.Errorf("sandbox: a guarantee did not hold (see the report above)")
			}
			return nil
		},
	}
}
