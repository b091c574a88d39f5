package control

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

func (d *MesosDeployer) setDefaults() {
	switch d.Kind {
	case DeployLocal:
		if d.StartTimeoutSec == 0 {
			d.StartTimeoutSec = 20
		}
		if d.StopTimeoutSec == 0 {
			d.StopTimeoutSec = 20
		}
	case DeploySystemd:
		if d.SSH == "" {
			d.SSH = "ssh"
		}
		if d.ConnectTimeoutSec == 0 {
			d.ConnectTimeoutSec = 10
		}
		if d.MasterUnit == "" {
			d.MasterUnit = "mesos-master@{name}"
		}
		if d.AgentUnit == "" {
			d.AgentUnit = "mesos-agent@{name}"
		}
		if d.Systemctl == "" {
			d.Systemctl = "systemctl"
		}
		if d.Journalctl == "" {
			d.Journalctl = "journalctl"
		}
		if d.StartTimeoutSec == 0 {
			d.StartTimeoutSec = 60
		}
		if d.StopTimeoutSec == 0 {
			d.StopTimeoutSec = 90 // more than the example units' TimeoutStopSec=60
		}
	}
}

var (
	// unitTemplate: a systemd unit name with {name} once; no shell
	// metacharacters (it is part of a remote command line).
	unitTemplate = regexp.MustCompile(`^[A-Za-z0-9:_.@-]*\{name\}[A-Za-z0-9:_.@-]*$`)
	// remoteWord is one word of the systemctl/journalctl command.
	remoteWord = regexp.MustCompile(`^[A-Za-z0-9_./=+:@-]+$`)
	// sshOption is an ssh -o Key=Value option.
	sshOption = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9]*=\S.*$`)
)

// validate reports every problem of the deployer through bad.
func (d *MesosDeployer) validate(bad func(field, value, want string)) {
	local := map[string]bool{"binary": d.Binary != "", "dir": d.Dir != "", "master_args": len(d.MasterArgs) > 0, "agent_args": len(d.AgentArgs) > 0}
	systemd := map[string]bool{"ssh": d.SSH != "", "ssh_user": d.SSHUser != "", "ssh_port": d.SSHPort != 0,
		"ssh_identity_file": d.SSHIdentityFile != "", "ssh_config": d.SSHConfig != "", "ssh_options": len(d.SSHOptions) > 0,
		"connect_timeout_sec": d.ConnectTimeoutSec != 0, "sudo": d.Sudo, "master_unit": d.MasterUnit != "",
		"agent_unit": d.AgentUnit != "", "systemctl": d.Systemctl != "", "journalctl": d.Journalctl != ""}
	only := func(fields map[string]bool, kind, why string) {
		for _, f := range slices.Sorted(maps.Keys(fields)) {
			if fields[f] {
				bad("mesos.deployer."+f, "", fmt.Sprintf("only with kind %s (kind is %q): %s", kind, d.Kind, why))
			}
		}
	}
	switch d.Kind {
	case DeployLocal:
		d.timeouts(bad)
		if d.Binary == "" || d.Dir == "" {
			bad("mesos.deployer", "binary="+d.Binary+" dir="+d.Dir, "binary (bin/mesos-sim) and dir (pid files and logs) for kind local")
		}
		only(systemd, DeploySystemd, "they say how to reach the units on real hosts")
	case DeploySystemd:
		only(local, DeployLocal, "on real hosts the unit's ExecStart and env file say how a process runs")
		d.timeouts(bad)
		if d.SSHPort < 0 || d.SSHPort > 65535 {
			bad("mesos.deployer.ssh_port", strconv.Itoa(d.SSHPort), "a TCP port (leave it out for ssh's configuration, 22 by default)")
		}
		if d.ConnectTimeoutSec < 1 || d.ConnectTimeoutSec > 300 {
			bad("mesos.deployer.connect_timeout_sec", strconv.Itoa(d.ConnectTimeoutSec), "1 to 300")
		}
		for i, o := range d.SSHOptions {
			f := fmt.Sprintf("mesos.deployer.ssh_options[%d]", i)
			key, _, _ := strings.Cut(o, "=")
			switch {
			case !sshOption.MatchString(o):
				bad(f, o, "an ssh -o option as Key=Value (e.g. StrictHostKeyChecking=yes)")
			case strings.EqualFold(key, "BatchMode"):
				bad(f, o, "no BatchMode: it is always yes (nobody answers a password or host key prompt of the control plane)")
			case strings.EqualFold(key, "ConnectTimeout"):
				bad(f, o, "no ConnectTimeout here: set mesos.deployer.connect_timeout_sec")
			}
		}
		for _, u := range []struct{ field, v string }{{"master_unit", d.MasterUnit}, {"agent_unit", d.AgentUnit}} {
			if !unitTemplate.MatchString(u.v) {
				bad("mesos.deployer."+u.field, u.v, "a systemd unit name with {name} once, standing for the process's name (e.g. mesos-master@{name})")
			}
		}
		for _, c := range []struct{ field, v string }{{"systemctl", d.Systemctl}, {"journalctl", d.Journalctl}} {
			for _, w := range strings.Fields(c.v) {
				if !remoteWord.MatchString(w) {
					bad("mesos.deployer."+c.field, c.v, "a command and plain arguments (letters, digits, _./=+:@-), e.g. /usr/bin/"+c.field+" or \""+c.field+" --user\"")
					break
				}
			}
		}
	default:
		bad("mesos.deployer.kind", d.Kind, "local (bin/mesos-sim on this machine) or systemd (units on real hosts over SSH)")
	}
}

// timeouts checks the start and stop timeouts (both kinds).
func (d *MesosDeployer) timeouts(bad func(field, value, want string)) {
	for _, t := range []struct {
		field string
		v     int
	}{{"start_timeout_sec", d.StartTimeoutSec}, {"stop_timeout_sec", d.StopTimeoutSec}} {
		if t.v < 1 || t.v > 3600 {
			bad("mesos.deployer."+t.field, strconv.Itoa(t.v), "1 to 3600")
		}
	}
}
