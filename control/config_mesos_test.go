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
// one for one, the systemd-ssh deployer (not built), a misspelt field.
func TestMesosSectionRefusals(t *testing.T) {
	for _, tc := range []struct{ name, edit, want string }{
		{"actions and mesos", mesosConfig + "actions:\n  masters_on_b: {run: \"true\"}\n", "actions: \"masters_on_b\" is not valid: no actions when mesos is set"},
		{"quorum too small", strings.Replace(mesosConfig, "  sides:", "  quorum: 1\n  sides:", 1), "mesos.quorum: \"1\" is not valid: between 2 and 3"},
		{"unequal masters", strings.Replace(mesosConfig, ", {name: b3, host: 10.0.1.3, port: 5050}", "", 1), "mesos.sides.b.masters: \"2\" is not valid: as many masters as side a"},
		{"systemd-ssh", strings.Replace(mesosConfig, "kind: local", "kind: systemd-ssh", 1), "systemd-ssh is documented (deploy/systemd/mesos-*@.service) but not built"},
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
