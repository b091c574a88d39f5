// Command zk-migrate moves the ZooKeeper ensemble under a Mesos cluster
// without downtime. See README.md for the runbook.
package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"
)

// exit codes scripts can rely on.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

func main() {
	app := newApp()
	// Errors of the commands' actions end in ExitErrHandler; what comes
	// back here failed before any action ran: a bad flag, a missing
	// required flag. Those are usage errors.
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintf(os.Stderr, "zk-migrate: %s (--help shows the flags)\n", err)
		os.Exit(exitUsage)
	}
}

// newApp is the command line: every command and flag (docs/reference.md
// documents them; TestReferenceDocumentsEveryRouteCommandAndFlag checks).
func newApp() *cli.App {
	return &cli.App{
		Name:  "zk-migrate",
		Usage: "move a Mesos cluster's ZooKeeper ensemble without stopping a task",
		Description: `zk-migrate runs a ZooKeeper-compatible sidecar proxy next to every Mesos
master and agent (Mesos' --zk points at localhost). The proxy relays every
session to the current primary ensemble and survives the loss of any
ZooKeeper server without the client noticing.

Start with the sandbox to see it work on this machine:

   zk-migrate sandbox

then put a proxy in front of an ensemble:

   zk-migrate proxy --listen 127.0.0.1:2181 --upstream zk1:2181,zk2:2181,zk3:2181`,
		Commands: append([]*cli.Command{
			proxyCommand(),
			controlCommand(),
			syncCommand(),
			validateCommand(),
			sandboxCommand(),
			demoCommand(),
		}, opCommands()...),
		CommandNotFound: func(c *cli.Context, name string) {
			fmt.Fprintf(os.Stderr, "zk-migrate: unknown command %q (zk-migrate --help lists the commands)\n", name)
			os.Exit(exitUsage)
		},
		ExitErrHandler: func(c *cli.Context, err error) {
			if err == nil {
				return
			}
			if msg := err.Error(); msg != "" {
				fmt.Fprintf(os.Stderr, "zk-migrate: %s\n", msg)
			}
			code := exitError
			if ec, ok := err.(cli.ExitCoder); ok {
				code = ec.ExitCode()
			}
			os.Exit(code)
		},
	}
}

// usageError is an error in the command line or configuration: exit code 2.
func usageError(format string, args ...any) error {
	return cli.Exit(fmt.Sprintf(format, args...), exitUsage)
}
