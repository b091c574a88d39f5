package control

import (
	"strings"
	"testing"
)

const mesosConfig = `
migration: {id: m, source_zk: zka:2181, target_zk: zkb:2181}
mesos:
  zk: zk://127.0.0.1:2181/mesos
  sides:
    a:
      masters: [{name: a1, host: 10.0.0.1, port: 5050}, {name: a2, host: 10.0.0.2, port: 5050}, {name: a3, host: 10.0.0.3, port: 5050}]
      agents: [{name: a-ag, host: 10.0.0.4, port: 5051}]
    b:
      masters: [{name: b1, host: 10.0.1.1, port: 5050}, {name: b2, host: 10.0.1.2, port: 5050}, {name: b3, host: 10.0.1.3, port: 5050}]
      agents: [{name: b-ag, host: 10.0.1.4, port: 5051, hostname: agent-b}]
  deployer: {kind: local, binary: bin/mesos-sim, dir: /tmp/mesos}
`

func TestMesosSectionDefaults(t *testing.T) {
	c, err := ParseConfig([]byte(mesosConfig))
	if err != nil {
		t.Fatal(err)
	}
	m := c.Mesos
	if m.Quorum != 2 || m.TimeoutSec != 120 || m.Sides.A.Agents[0].Hostname != "10.0.0.4" || m.Sides.B.Agents[0].Hostname != "agent-b" {
		t.Fatalf("%+v", m)
	}
}

// TestMesosSectionRefusals: what cannot work is refused with the field and
// the fix: actions beside mesos (which would win is not guessed), a quorum
// that lets two disjoint majorities commit, masters that cannot be replaced
// one for one, an unknown deployer kind, a misspelt field.
func TestMesosSectionRefusals(t *testing.T) {
	for _, tc := range []struct{ name, edit, want string }{
		{"actions and mesos", mesosConfig + "actions:\n  masters_on_b: {run: \"true\"}\n", "actions: \"masters_on_b\" is not valid: no actions when mesos is set"},
		{"quorum too small", strings.Replace(mesosConfig, "  sides:", "  quorum: 1\n  sides:", 1), "mesos.quorum: \"1\" is not valid: between 2 and 3"},
		{"unequal masters", strings.Replace(mesosConfig, ", {name: b3, host: 10.0.1.3, port: 5050}", "", 1), "mesos.sides.b.masters: \"2\" is not valid: as many masters as side a"},
		{"unknown kind", strings.Replace(mesosConfig, "kind: local", "kind: ansible", 1), `mesos.deployer.kind: "ansible" is not valid: local (bin/mesos-sim on this machine) or systemd`},
		{"systemd field on local", strings.Replace(mesosConfig, "kind: local,", "kind: local, sudo: true,", 1), `mesos.deployer.sudo: "" is not valid: only with kind systemd (kind is "local")`},
		{"same address", strings.Replace(mesosConfig, "10.0.0.2, port", "10.0.0.1, port", 1), "a host and port of its own"},
		{"no B agents", strings.Replace(mesosConfig, "      agents: [{name: b-ag, host: 10.0.1.4, port: 5051, hostname: agent-b}]\n", "", 1), "mesos.sides.b.agents"},
		{"misspelt", strings.Replace(mesosConfig, "  deployer:", "  deployr:", 1), "mesos.deployr: unknown field (did you mean deployer?)"},
	} {
		_, err := ParseConfig([]byte(tc.edit))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v; want %q", tc.name, err, tc.want)
		}
	}
}

const systemdConfig = `
migration: {id: m, source_zk: zka:2181, target_zk: zkb:2181}
mesos:
  zk: zk://127.0.0.1:2181/mesos
  sides:
    a: {masters: [{name: a1, host: 10.0.0.1, port: 5050}]}
    b: {masters: [{name: b1, host: 10.0.1.1, port: 5050}]}
  deployer:
    kind: systemd
    ssh_user: zkm
    ssh_identity_file: /etc/zk-migrate/id_ed25519
    ssh_options: [StrictHostKeyChecking=yes, ProxyJump=bastion]
    sudo: true
`

// TestMesosSystemdDeployerSection: kind systemd's defaults (the units of
// deploy/systemd, ssh's own port and user unless set, a stop timeout
// beyond the units' TimeoutStopSec).
func TestMesosSystemdDeployerSection(t *testing.T) {
	c, err := ParseConfig([]byte(systemdConfig))
	if err != nil {
		t.Fatal(err)
	}
	d := c.Mesos.Deployer
	if d.SSH != "ssh" || d.SSHPort != 0 || d.ConnectTimeoutSec != 10 || d.MasterUnit != "mesos-master@{name}" || d.AgentUnit != "mesos-agent@{name}" ||
		d.Systemctl != "systemctl" || d.Journalctl != "journalctl" || d.StartTimeoutSec != 60 || d.StopTimeoutSec != 90 || !d.Sudo || d.SSHUser != "zkm" {
		t.Fatalf("%+v", d)
	}
}

// TestMesosSystemdDeployerRefusals: what cannot work on real hosts is
// refused with the field and the fix: local fields (the unit says how a
// process runs), a prompt-allowing or duplicated ssh option, a unit name
// without {name} or with shell metacharacters, a systemctl command a shell
// would interpret.
func TestMesosSystemdDeployerRefusals(t *testing.T) {
	for _, tc := range []struct{ name, edit, want string }{
		{"binary", "    binary: bin/mesos-sim\n", `mesos.deployer.binary: "" is not valid: only with kind local (kind is "systemd"): on real hosts the unit's ExecStart`},
		{"BatchMode", "    ssh_options: [StrictHostKeyChecking=yes, BatchMode=no]\n", `mesos.deployer.ssh_options[1]: "BatchMode=no" is not valid: no BatchMode: it is always yes`},
		{"ConnectTimeout", "    ssh_options: [connecttimeout=3]\n", "set mesos.deployer.connect_timeout_sec"},
		{"option syntax", "    ssh_options: [-v]\n", "an ssh -o option as Key=Value"},
		{"unit without name", "    master_unit: mesos-master\n", `mesos.deployer.master_unit: "mesos-master" is not valid: a systemd unit name with {name} once`},
		{"unit with shell", "    agent_unit: \"a@{name};reboot\"\n", "mesos.deployer.agent_unit"},
		{"systemctl with shell", "    systemctl: \"systemctl $(reboot)\"\n", "mesos.deployer.systemctl"},
		{"port", "    ssh_port: 70000\n", "mesos.deployer.ssh_port"},
		{"stop timeout", "    stop_timeout_sec: -1\n", `mesos.deployer.stop_timeout_sec: "-1" is not valid: 1 to 3600`},
	} {
		cfg := systemdConfig
		if strings.HasPrefix(tc.edit, "    ssh_options:") {
			cfg = strings.Replace(cfg, "    ssh_options: [StrictHostKeyChecking=yes, ProxyJump=bastion]\n", "", 1)
		}
		_, err := ParseConfig([]byte(strings.Replace(cfg, "    sudo: true\n", tc.edit, 1)))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v; want %q", tc.name, err, tc.want)
		}
	}
	if _, err := ParseConfig([]byte(strings.Replace(systemdConfig, "    sudo: true\n", "    systemctl: systemctl --user\n    master_unit: zkm-mesos-master-{name}.service\n", 1))); err != nil {
		t.Errorf("systemctl --user and a unit of one's own: %v", err)
	}
}
