package deployer

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// Systemd runs each process as a systemd unit on its host, reached over
// SSH: mesos-master@NAME or mesos-agent@NAME on Process.Host (the units
// are deploy/systemd/mesos-master@.service and mesos-agent@.service).
//
//   - Start is `systemctl start UNIT`, then a wait until the process serves
//     HTTP on its port (http://HOST:PORT/health); a unit that goes inactive
//     meanwhile, or no answer in StartTimeout, is an error with the unit's
//     last journal lines (`journalctl -u UNIT -n 20 --no-pager`).
//   - Stop is `systemctl stop UNIT`, which returns once the process has
//     exited: SIGTERM, and the units never SIGKILL (SendSIGKILL=no). Not
//     stopped in StopTimeout is an error.
//   - Running is `systemctl is-active UNIT` (inactive, exit status 3, is
//     an answer; an ssh failure is an error). A unit that is not active
//     while something still answers on the process's port counts as
//     running: a stop that timed out leaves its process behind.
//
// The unit is the process's state: any control node reaches it. Every
// command goes through SSH (the operator's ssh client and configuration),
// as `sudo -n systemctl ...` when Sudo is set.
type Systemd struct {
	SSH SSH
	// Sudo prefixes systemctl and journalctl with `sudo -n` (systemctl
	// start needs root unless the ssh user has polkit rights).
	Sudo bool
	// MasterUnit and AgentUnit name a process's unit, "{name}" standing
	// for Process.Name (defaults "mesos-master@{name}",
	// "mesos-agent@{name}").
	MasterUnit, AgentUnit string
	// Systemctl and Journalctl are the remote commands, words separated
	// by spaces (defaults "systemctl", "journalctl"; e.g. "systemctl
	// --user" for user units).
	Systemctl, Journalctl string
	// StartTimeout bounds Start (default 60 s), StopTimeout Stop (default
	// 90 s: more than the units' TimeoutStopSec=60).
	StartTimeout, StopTimeout time.Duration
}

var (
	_ Deployer  = (*Systemd)(nil)
	_ Describer = (*Systemd)(nil)
)

// Unit is p's unit name.
func (s *Systemd) Unit(p Process) string {
	t := s.MasterUnit
	if t == "" {
		t = "mesos-master@{name}"
	}
	if p.Kind == Agent {
		if t = s.AgentUnit; t == "" {
			t = "mesos-agent@{name}"
		}
	}
	return strings.ReplaceAll(t, "{name}", p.Name)
}

// tool is a remote command line: sudo -n and the configured command.
func (s *Systemd) tool(cmd, def string, args ...string) []string {
	if strings.TrimSpace(cmd) == "" {
		cmd = def
	}
	var out []string
	if s.Sudo {
		out = []string{"sudo", "-n"}
	}
	return append(append(out, strings.Fields(cmd)...), args...)
}

// systemctl runs `systemctl VERB UNIT` on p's host; a failure is a
// *RemoteError with a hint for systemctl's and sudo's own failures.
func (s *Systemd) systemctl(ctx context.Context, p Process, verb string) (string, error) {
	unit := s.Unit(p)
	out, err := s.SSH.Run(ctx, p.Host, s.tool(s.Systemctl, "systemctl", verb, unit)...)
	var re *RemoteError
	if errors.As(err, &re) && re.Hint == "" {
		re.Hint = s.hint(p, unit, re)
	}
	return out, err
}

// hint is the fix for a remote command that ran and failed.
func (s *Systemd) hint(p Process, unit string, e *RemoteError) string {
	user := s.SSH.User
	if user == "" {
		user = "the ssh user"
	}
	tmpl := "mesos-master@.service"
	if p.Kind == Agent {
		tmpl = "mesos-agent@.service"
	}
	switch msg := e.Stderr; {
	case e.Status == 127:
		return "the command is not on " + p.Host + "'s PATH for " + user + ": set mesos.deployer.systemctl/journalctl to its path"
	case strings.Contains(msg, "sudo:") || (s.Sudo && e.Status == 1 && strings.Contains(msg, "password")):
		return user + " must be allowed to run systemctl and journalctl with sudo without a password on " + p.Host +
			" (a sudoers NOPASSWD rule for them), or set mesos.deployer.sudo: false and give it polkit rights"
	case strings.Contains(msg, "Access denied"), strings.Contains(msg, "Interactive authentication required"):
		return "managing " + unit + " needs root: set mesos.deployer.sudo: true (with a sudoers NOPASSWD rule), " +
			"or give " + user + " polkit rights over it"
	case strings.Contains(msg, "Unit") && (strings.Contains(msg, "not found") || strings.Contains(msg, "not loaded")):
		return "install the unit on " + p.Host + ": deploy/systemd/" + tmpl + " in /etc/systemd/system with its env file, " +
			"then systemctl daemon-reload (or set mesos.deployer.master_unit/agent_unit to your units' names)"
	case strings.Contains(msg, "timeout"):
		return "the process did not exit on SIGTERM within the unit's TimeoutStopSec and is not killed (SendSIGKILL=no): " +
			"find out why it hangs (systemctl status " + unit + "), or kill it and wait out its ZooKeeper session before going on"
	}
	return "see `systemctl status " + unit + "` on " + p.Host
}

func (s *Systemd) startTimeout() time.Duration {
	if s.StartTimeout > 0 {
		return s.StartTimeout
	}
	return 60 * time.Second
}

func (s *Systemd) stopTimeout() time.Duration {
	if s.StopTimeout > 0 {
		return s.StopTimeout
	}
	return 90 * time.Second
}

// Start starts p's unit (a no-op if it runs) and waits until p serves
// HTTP.
func (s *Systemd) Start(ctx context.Context, p Process) error {
	unit := s.Unit(p)
	timeout := s.startTimeout()
	sctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if _, err := s.systemctl(sctx, p, "start"); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("start %s: %w%s", p, err, s.journalAfter(err, p))
	}
	client := &http.Client{Timeout: time.Second}
	lastCheck, failed := time.Now(), 0
	for {
		if s.answers(sctx, client, p) {
			return nil
		}
		if time.Since(lastCheck) >= time.Second { // the unit still up?
			lastCheck = time.Now()
			state, err := s.state(sctx, p)
			if err != nil {
				failed++ // three in a row: not a passing network hiccup
			} else {
				failed = 0
			}
			switch {
			case ctx.Err() != nil:
				return ctx.Err()
			case err != nil && sctx.Err() == nil && failed >= 3:
				return fmt.Errorf("start %s: started, then: %w", p, err)
			case err == nil && !runningState(state):
				return fmt.Errorf("start %s: unit %s on %s started, then went %s (it exited): %s", p, unit, p.Host, state, s.Describe(p))
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-sctx.Done():
			return fmt.Errorf("start %s: unit %s on %s started but %s/health does not answer after %v (a firewall between "+
				"this control node and the port, or the env file's address and port differ from migration.yaml's): %s",
				p, unit, p.Host, p.URL(), timeout, s.Describe(p))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// answers reports whether p serves HTTP.
func (s *Systemd) answers(ctx context.Context, client *http.Client, p Process) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.URL()+"/health", nil)
	if err != nil {
		return false
	}
	resp, err := client.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return true
}

// Stop stops p's unit (a no-op if it is stopped) and returns once it
// has: SIGTERM, never SIGKILL.
func (s *Systemd) Stop(ctx context.Context, p Process) error {
	unit := s.Unit(p)
	timeout := s.stopTimeout()
	sctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if _, err := s.systemctl(sctx, p, "stop"); err != nil {
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case sctx.Err() != nil:
			return fmt.Errorf("stop %s: `systemctl stop %s` on %s did not return within %v; not killed (the units never "+
				"SIGKILL: a killed master's znodes outlive it until its session expires; find out why it hangs: systemctl status %s; "+
				"or kill it and wait out its session): %s", p, unit, p.Host, timeout, unit, s.Describe(p))
		}
		return fmt.Errorf("stop %s: %w%s", p, err, s.journalAfter(err, p))
	}
	// systemctl stop returned once the unit's processes exited; anything
	// still on the port is outside the unit (left by a stop that timed
	// out earlier) and would be taken for p.
	client := &http.Client{Timeout: time.Second}
	for i := 0; s.answers(sctx, client, p); i++ {
		if i == 10 {
			return fmt.Errorf("stop %s: unit %s on %s is stopped but %s still answers: a process outside the unit (one "+
				"left by a stop that timed out, since the units never SIGKILL) holds its port; stop it, then retry", p, unit, p.Host, p.URL())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(300 * time.Millisecond):
		}
	}
	return nil
}

// runningState reports whether a unit in this ActiveState has a process.
func runningState(state string) bool {
	switch state {
	case "active", "activating", "deactivating", "reloading", "refreshing":
		return true
	}
	return false
}

// state is p's unit's ActiveState, from `systemctl is-active`.
func (s *Systemd) state(ctx context.Context, p Process) (string, error) {
	out, err := s.systemctl(ctx, p, "is-active")
	state := strings.TrimSpace(out)
	if err == nil {
		return state, nil
	}
	var re *RemoteError
	if errors.As(err, &re) && re.Status > 0 && re.Status != 255 {
		switch state {
		case "inactive", "failed", "unknown", "activating", "deactivating", "reloading", "refreshing", "maintenance":
			return state, nil // is-active exits 3 for these
		}
	}
	return "", err
}

// Running reports whether p's unit is active (or still answers on its
// port).
func (s *Systemd) Running(ctx context.Context, p Process) (bool, error) {
	state, err := s.state(ctx, p)
	if err != nil {
		return false, fmt.Errorf("is %s running: %w", p, err)
	}
	if runningState(state) {
		return true, nil
	}
	return s.answers(ctx, &http.Client{Timeout: time.Second}, p), nil
}

// journalAfter is "; " and the unit's journal after a systemctl command
// that ran and failed ("" when ssh itself failed: the journal is out of
// reach too).
func (s *Systemd) journalAfter(err error, p Process) string {
	var re *RemoteError
	if errors.As(err, &re) && (re.Status == 255 || re.Status < 0) {
		return ""
	}
	return "; " + s.Describe(p)
}

// Describe returns the unit's last journal lines.
func (s *Systemd) Describe(p Process) string {
	ct := s.SSH.ConnectTimeout
	if ct <= 0 {
		ct = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), ct+10*time.Second)
	defer cancel()
	unit := s.Unit(p)
	out, err := s.SSH.Run(ctx, p.Host, s.tool(s.Journalctl, "journalctl", "-u", unit, "-n", "20", "--no-pager")...)
	if err != nil {
		return "no journal of " + unit + ": " + err.Error()
	}
	return "last journal lines of " + unit + " on " + p.Host + ": " + oneLine(out)
}
