package control

import (
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
)

// Mesos is migration.yaml's mesos section: the Mesos cluster phases 2 to 6
// move from A's side to B's, and how its processes are started. With it the
// control plane runs those phases itself (control/server, mesos*.go);
// without it, actions do (a user's own automation). Both at once is refused.
//
//	mesos:
//	  zk: zk://127.0.0.1:2181/mesos   # what the processes use (the host's proxy)
//	  quorum: 2                       # the masters' --quorum (default: a majority)
//	  timeout_sec: 120                # each wait of a phase
//	  sides:
//	    a:
//	      masters: [{name: a-m1, host: 10.0.0.1, port: 5050}, ...]
//	      agents:  [{name: a-ag1, host: 10.0.0.4, port: 5051, hostname: agent-a1}]
//	    b: {masters: [...], agents: [...]}
//	  deployer:
//	    kind: local                   # local (bin/mesos-sim on this machine) or systemd (units over SSH)
//	    binary: bin/mesos-sim         # local only
//	    dir: /var/lib/zk-migrate/mesos
//	    master_args: [--zk_session_timeout=10secs]
//	    agent_args: []
//
// or, on real hosts (README, "Mesos-aware phases"):
//
//	deployer:
//	  kind: systemd                 # ssh HOST systemctl start|stop|is-active UNIT
//	  ssh_user: zkm                 # default: ssh's configuration
//	  ssh_port: 22
//	  ssh_identity_file: /etc/zk-migrate/id_ed25519
//	  ssh_config: /etc/zk-migrate/ssh_config
//	  ssh_options: [StrictHostKeyChecking=yes, ProxyJump=bastion]
//	  connect_timeout_sec: 10
//	  sudo: true                    # sudo -n systemctl ...
//	  master_unit: mesos-master@{name}
//	  agent_unit: mesos-agent@{name}
//	  start_timeout_sec: 60         # both kinds (local's default 20)
//	  stop_timeout_sec: 90
type Mesos struct {
	ZK         string `yaml:"zk"`
	Quorum     int    `yaml:"quorum"`
	TimeoutSec int    `yaml:"timeout_sec"`
	Sides      struct {
		A MesosSide `yaml:"a"`
		B MesosSide `yaml:"b"`
	} `yaml:"sides"`
	Deployer MesosDeployer `yaml:"deployer"`
}

// MesosSide lists one side's masters and agents.
type MesosSide struct {
	Masters []MesosProcess `yaml:"masters"`
	Agents  []MesosProcess `yaml:"agents"`
}

// MesosProcess is one master or agent: where it listens (host, port: a
// master's operator API is http://host:port) and the hostname it
// advertises (its machine in maintenance calls; default host).
type MesosProcess struct {
	Name     string `yaml:"name"`
	Host     string `yaml:"host"`
	Port     int    `yaml:"port"`
	Hostname string `yaml:"hostname"`
}

// MesosDeployer says how processes are started and stopped: kind local
// (Binary, Dir, MasterArgs, AgentArgs) or kind systemd (the SSH and unit
// fields; deployer.Systemd says what each does).
type MesosDeployer struct {
	Kind       string   `yaml:"kind"`
	Binary     string   `yaml:"binary"`
	Dir        string   `yaml:"dir"`
	MasterArgs []string `yaml:"master_args"`
	AgentArgs  []string `yaml:"agent_args"`

	SSH               string   `yaml:"ssh"`
	SSHUser           string   `yaml:"ssh_user"`
	SSHPort           int      `yaml:"ssh_port"`
	SSHIdentityFile   string   `yaml:"ssh_identity_file"`
	SSHConfig         string   `yaml:"ssh_config"`
	SSHOptions        []string `yaml:"ssh_options"`
	ConnectTimeoutSec int      `yaml:"connect_timeout_sec"`
	Sudo              bool     `yaml:"sudo"`
	MasterUnit        string   `yaml:"master_unit"`
	AgentUnit         string   `yaml:"agent_unit"`
	Systemctl         string   `yaml:"systemctl"`
	Journalctl        string   `yaml:"journalctl"`

	StartTimeoutSec int `yaml:"start_timeout_sec"`
	StopTimeoutSec  int `yaml:"stop_timeout_sec"`
}

// Deployer kinds.
const (
	DeployLocal   = "local"
	DeploySystemd = "systemd"
)

func (m *Mesos) setDefaults() {
	if m.Quorum == 0 {
		m.Quorum = len(m.Sides.A.Masters)/2 + 1
	}
	if m.TimeoutSec == 0 {
		m.TimeoutSec = 120
	}
	m.Deployer.setDefaults()
	for _, s := range []*MesosSide{&m.Sides.A, &m.Sides.B} {
		for _, l := range [][]MesosProcess{s.Masters, s.Agents} {
			for i := range l {
				if l[i].Hostname == "" {
					l[i].Hostname = l[i].Host
				}
			}
		}
	}
}

// validate reports every problem of the mesos section through bad.
func (m *Mesos) validate(c *Config, bad func(field, value, want string)) {
	if len(c.Actions) > 0 {
		bad("actions", strings.Join(slices.Sorted(maps.Keys(c.Actions)), ","), "no actions when mesos is set: the mesos section runs phases 2 to 6 itself "+
			"(remove actions, or remove mesos to run your own automation)")
	}
	if !strings.HasPrefix(m.ZK, "zk://") {
		bad("mesos.zk", m.ZK, "zk://host:port[,host:port]/path, what the Mesos processes use (the local proxy)")
	}
	a, b := m.Sides.A, m.Sides.B
	n := len(a.Masters)
	if n == 0 || len(b.Masters) != n {
		bad("mesos.sides.b.masters", strconv.Itoa(len(b.Masters)), fmt.Sprintf("as many masters as side a (%d, at least 1): masters are replaced one for one", n))
	}
	if m.Quorum < 1 || n > 2*m.Quorum-1 || m.Quorum > n {
		bad("mesos.quorum", strconv.Itoa(m.Quorum), fmt.Sprintf("between %d and %d for %d masters (at most 2*quorum-1 masters may run)", n/2+1, n, n))
	}
	if len(a.Agents) > 0 && len(b.Agents) == 0 {
		bad("mesos.sides.b.agents", "", "at least one agent: A's tasks need somewhere to go")
	}
	if m.TimeoutSec < 1 || m.TimeoutSec > 3600 {
		bad("mesos.timeout_sec", strconv.Itoa(m.TimeoutSec), "1 to 3600")
	}
	names := map[string]bool{}
	addrs := map[string]bool{}
	for _, side := range []struct {
		name string
		s    MesosSide
	}{{"a", a}, {"b", b}} {
		for _, l := range []struct {
			kind string
			ps   []MesosProcess
		}{{"masters", side.s.Masters}, {"agents", side.s.Agents}} {
			for i, p := range l.ps {
				f := fmt.Sprintf("mesos.sides.%s.%s[%d]", side.name, l.kind, i)
				if !idPattern.MatchString(p.Name) || names[p.Name] {
					bad(f+".name", p.Name, "a unique name (lower-case letters, digits, '.', '_', '-')")
				}
				names[p.Name] = true
				addr := net.JoinHostPort(p.Host, strconv.Itoa(p.Port))
				if p.Host == "" || p.Port < 1 || p.Port > 65535 || addrs[addr] {
					bad(f, addr, "a host and port of its own")
				}
				addrs[addr] = true
			}
		}
	}
	m.Deployer.validate(bad)
}
