// Command mesos-sim is the Mesos emulator: masters, agents and a framework
// that reach ZooKeeper through ZooKeeper's C client library, as Mesos does.
// It is a separate binary from zk-migrate because it links libzookeeper_mt
// (cgo); the proxy binary must run on hosts without that library. See
// README.md, "The Mesos emulator".
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/zk-migrate/zk-migrate/mesosim"
	"github.com/zk-migrate/zk-migrate/mesosim/czk"
)

// Exit codes: 0 on SIGTERM/SIGINT or when the master shuts an agent down;
// Mesos' EXIT_FAILURE is 1.
const (
	exitFailure = 1
	exitUsage   = 2
)

func main() {
	czk.Quiet()
	app := &cli.App{
		Name:  "mesos-sim",
		Usage: "an emulated Mesos cluster on ZooKeeper's C client (masters, agents, a framework)",
		Description: `Every process finds the others through ZooKeeper exactly as Mesos does
(json.info_ contention, log_replicas/, child watches) using libzookeeper_mt.
A master exits with status 1 on what makes a Mesos master exit: its session
expires while it leads, it loses leadership, it cannot reach a quorum of log
replicas, or more replicas are registered than --quorum allows.

   mesos-sim master --zk zk://127.0.0.1:2181/mesos --quorum 2 --port 5050
   mesos-sim agent --master zk://127.0.0.1:2181/mesos --port 5051
   mesos-sim framework --master zk://127.0.0.1:2181/mesos --tasks 10 --history tasks.jsonl`,
		Commands: []*cli.Command{masterCommand(), agentCommand(), frameworkCommand()},
		ExitErrHandler: func(c *cli.Context, err error) {
			if err == nil {
				return
			}
			fmt.Fprintf(os.Stderr, "mesos-sim: %s\n", err)
			code := exitFailure
			if ec, ok := err.(cli.ExitCoder); ok {
				code = ec.ExitCode()
			}
			os.Exit(code)
		},
	}
	if err := app.Run(os.Args); err != nil {
		os.Exit(exitFailure)
	}
}

func usageError(format string, args ...any) error {
	return cli.Exit(fmt.Sprintf(format, args...), exitUsage)
}

func sessionFlag() cli.Flag {
	return &cli.DurationFlag{Name: "zk_session_timeout", Value: 10 * time.Second,
		Usage: "ZooKeeper session timeout; a session disconnected this long is given up, as in Mesos"}
}

func commonFlags(port int) []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "ip", Value: "127.0.0.1", Usage: "IPv4 address to listen on and advertise"},
		&cli.IntFlag{Name: "port", Value: port, Usage: "HTTP port (0: any free port)"},
		&cli.StringFlag{Name: "hostname", Usage: "hostname to advertise (default: --ip)"},
		sessionFlag(),
	}
}

func newLogger() *slog.Logger {
	return slog.New(slog.NewJSONHandler(os.Stderr, nil)).With("os_pid", os.Getpid())
}

func listen(c *cli.Context) (net.Listener, error) {
	addr := net.JoinHostPort(c.String("ip"), strconv.Itoa(c.Int("port")))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, usageError("cannot listen on %s: %v (pick another --port)", addr, err)
	}
	return ln, nil
}

func zkFlag(c *cli.Context, name string) (mesosim.ZKURL, error) {
	if c.String(name) == "" {
		return mesosim.ZKURL{}, usageError("--%s is required (zk://host:port[,host:port]/path)", name)
	}
	u, err := mesosim.ParseZKURL(c.String(name))
	if err != nil {
		return mesosim.ZKURL{}, usageError("--%s: %v", name, err)
	}
	return u, nil
}

func signalContext(c *cli.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(c.Context, syscall.SIGTERM, syscall.SIGINT)
}

func masterCommand() *cli.Command {
	return &cli.Command{
		Name:  "master",
		Usage: "run a master: contend in ZooKeeper, lead, serve the operator API",
		Flags: append(commonFlags(5050),
			&cli.StringFlag{Name: "zk", Usage: "zk://[user:password@]host:port[,host:port]/path"},
			&cli.IntFlag{Name: "quorum", Usage: "log replicas a registry write needs (a majority of the masters)"},
			&cli.DurationFlag{Name: "registry_fetch_timeout", Value: time.Minute, Usage: "an elected master exits if it cannot read the registry from a quorum of replicas within this"},
			&cli.DurationFlag{Name: "registry_store_timeout", Value: 20 * time.Second, Usage: "the leader exits if a registry write does not reach a quorum within this"},
			&cli.DurationFlag{Name: "agent_ping_timeout", Value: 15 * time.Second, Usage: "agent heartbeat timeout"},
			&cli.IntFlag{Name: "max_agent_ping_timeouts", Value: 5, Usage: "missed timeouts before an agent is removed (its tasks LOST)"},
		),
		Action: func(c *cli.Context) error {
			zk, err := zkFlag(c, "zk")
			if err != nil {
				return err
			}
			if c.Int("quorum") < 1 {
				return usageError("--quorum is required: the number of log replicas a write needs (2 for 3 masters)")
			}
			ln, err := listen(c)
			if err != nil {
				return err
			}
			m, err := mesosim.NewMaster(mesosim.MasterConfig{
				ZK: zk, Quorum: c.Int("quorum"), SessionTimeout: c.Duration("zk_session_timeout"),
				RegistryFetchTimeout: c.Duration("registry_fetch_timeout"), RegistryStoreTimeout: c.Duration("registry_store_timeout"),
				AgentPingTimeout: c.Duration("agent_ping_timeout"), MaxAgentPingTimeouts: c.Int("max_agent_ping_timeouts"),
				Hostname: c.String("hostname"), IP: c.String("ip"), Listener: ln, Log: newLogger(),
			})
			if err != nil {
				return usageError("%v", err)
			}
			ctx, stop := signalContext(c)
			defer stop()
			if err := m.Run(ctx); err != nil {
				// Like Mesos' EXIT(EXIT_FAILURE): no clean close, the
				// sessions and their ephemerals expire on the server.
				os.Exit(exitFailure)
			}
			return nil
		},
	}
}

func agentCommand() *cli.Command {
	return &cli.Command{
		Name:  "agent",
		Usage: "run an agent: follow the leading master, register, run tasks",
		Flags: append(commonFlags(5051),
			&cli.StringFlag{Name: "master", Usage: "zk://[user:password@]host:port[,host:port]/path"},
			&cli.StringFlag{Name: "work_dir", Usage: "keeps the agent id across restarts"},
			&cli.DurationFlag{Name: "heartbeat", Value: time.Second, Usage: "heartbeat interval to the leader"},
		),
		Action: func(c *cli.Context) error {
			zk, err := zkFlag(c, "master")
			if err != nil {
				return err
			}
			ln, err := listen(c)
			if err != nil {
				return err
			}
			a, err := mesosim.NewAgent(mesosim.AgentConfig{Master: zk, SessionTimeout: c.Duration("zk_session_timeout"),
				Hostname: c.String("hostname"), IP: c.String("ip"), Listener: ln, WorkDir: c.String("work_dir"),
				Heartbeat: c.Duration("heartbeat"), Log: newLogger()})
			if err != nil {
				return usageError("%v", err)
			}
			ctx, stop := signalContext(c)
			defer stop()
			if err := a.Run(ctx); err != nil && !errors.Is(err, mesosim.ErrShutdown) {
				return cli.Exit(err.Error(), exitFailure)
			}
			return nil
		},
	}
}

func frameworkCommand() *cli.Command {
	return &cli.Command{
		Name:  "framework",
		Usage: "run a framework that keeps launching and killing tasks and records every task state change",
		Flags: append(commonFlags(0),
			&cli.StringFlag{Name: "master", Usage: "zk://[user:password@]host:port[,host:port]/path"},
			&cli.StringFlag{Name: "name", Value: "mesos-sim"},
			&cli.IntFlag{Name: "tasks", Value: 4, Usage: "tasks kept active"},
			&cli.DurationFlag{Name: "churn", Value: 2 * time.Second, Usage: "kill and replace one task this often (0: never)"},
			&cli.StringFlag{Name: "history", Usage: "append every task state change to this file (JSON lines)"},
		),
		Action: func(c *cli.Context) error {
			zk, err := zkFlag(c, "master")
			if err != nil {
				return err
			}
			ln, err := listen(c)
			if err != nil {
				return err
			}
			cfg := mesosim.FrameworkConfig{Master: zk, SessionTimeout: c.Duration("zk_session_timeout"), Name: c.String("name"),
				IP: c.String("ip"), Listener: ln, Tasks: c.Int("tasks"), Churn: c.Duration("churn"), Log: newLogger()}
			if p := c.String("history"); p != "" {
				f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
				if err != nil {
					return usageError("--history: %v", err)
				}
				defer f.Close()
				cfg.History = f
			}
			fw, err := mesosim.NewFramework(cfg)
			if err != nil {
				return usageError("%v", err)
			}
			ctx, stop := signalContext(c)
			defer stop()
			return fw.Run(ctx)
		},
	}
}
