// Package deployer starts and stops Mesos processes (masters and agents) on
// the hosts of either side of a migration, for the control plane's phases 2
// to 6 (migration.yaml's mesos.deployer).
//
// Two implementations of Deployer:
//
//   - Local (kind local) runs bin/mesos-sim processes on this machine, with
//     pid files: the sandbox, the demo and the tests;
//   - Systemd (kind systemd) drives a systemd unit per process on its host
//     over SSH (deploy/systemd/mesos-master@.service, mesos-agent@.service),
//     through the OpenSSH client so the operator's ssh configuration
//     applies: Start is `systemctl start` and a wait for HTTP, Stop
//     `systemctl stop` (SIGTERM, as Local), Running `systemctl is-active`.
//     Its tests use a real sshd; systemd is emulated there by a systemctl
//     stand-in (testdata/systemctl), since none runs in the test container.
package deployer

import (
	"context"
	"fmt"
)

// Kind is what a process is.
type Kind string

// The kinds of Mesos process a deployer runs.
const (
	Master Kind = "master"
	Agent  Kind = "agent"
)

// Process is one Mesos master or agent of a migration, as migration.yaml's
// mesos section declares it.
type Process struct {
	Kind Kind
	// Name is unique in the migration ("a-master-1"); it names the pid
	// file, the log and the systemd instance.
	Name string
	// Side is "A" (the processes that leave) or "B" (those that arrive).
	Side string
	// Host is the address the process listens on and advertises; Port its
	// HTTP port; Hostname the name it advertises (the machine id in
	// maintenance calls).
	Host     string
	Port     int
	Hostname string
}

// URL is the process's HTTP endpoint (a master's operator API).
func (p Process) URL() string { return fmt.Sprintf("http://%s:%d", p.Host, p.Port) }

func (p Process) String() string {
	return fmt.Sprintf("%s %s (side %s, %s:%d)", p.Kind, p.Name, p.Side, p.Host, p.Port)
}

// Deployer starts and stops Mesos processes. Its contract, which the phases
// rely on:
//
//   - Every call is idempotent: a new control leader repeats its
//     predecessor's calls. Start of a running process and Stop of a stopped
//     one succeed and change nothing.
//   - Start returns once the process serves HTTP on its port (it may not
//     have joined the cluster yet: the phases check that through the
//     operator API), or with an error saying why it did not start (its
//     last log lines).
//   - Stop is graceful and returns once the process has exited: SIGTERM
//     (systemctl stop), so a master closes its ZooKeeper sessions and its
//     json.info_ and log_replicas/ znodes go at once. A process that does
//     not exit in time is an error, never a SIGKILL: a killed master's
//     znodes stay until its session expires, and starting its replacement
//     meanwhile breaks the --quorum rule (2q-1 masters at most).
//   - Running reports whether the process is up now, from any control node
//     (not only the one that started it).
//   - The process's state lives with the process (pid files, systemd), not
//     in the deployer value: any control node can act on what another
//     started.
type Deployer interface {
	Start(ctx context.Context, p Process) error
	Stop(ctx context.Context, p Process) error
	Running(ctx context.Context, p Process) (bool, error)
}

// Describer is implemented by deployers that can say more about a process
// that is not running (its last log lines), for the phases' errors.
type Describer interface {
	Describe(p Process) string
}
