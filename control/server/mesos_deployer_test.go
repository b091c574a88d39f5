package server

import (
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/zk-migrate/zk-migrate/control"
	"github.com/zk-migrate/zk-migrate/deployer"
)

// TestNewDeployerSystemd: migration.yaml's kind systemd builds the SSH
// deployer with every field the user set and the defaults of the rest.
func TestNewDeployerSystemd(t *testing.T) {
	c, err := control.ParseConfig([]byte(`
migration: {id: m, source_zk: zka:2181, target_zk: zkb:2181}
mesos:
  zk: zk://127.0.0.1:2181/mesos
  sides:
    a: {masters: [{name: a1, host: 10.0.0.1, port: 5050}]}
    b: {masters: [{name: b1, host: 10.0.1.1, port: 5050}]}
  deployer:
    kind: systemd
    ssh_user: zkm
    ssh_port: 2222
    ssh_identity_file: /etc/zk-migrate/id_ed25519
    ssh_config: /etc/zk-migrate/ssh_config
    ssh_options: [ProxyJump=bastion]
    sudo: true
    stop_timeout_sec: 120
`))
	if err != nil {
		t.Fatal(err)
	}
	dep, err := NewDeployer(c.Mesos)
	if err != nil {
		t.Fatal(err)
	}
	s, ok := dep.(*deployer.Systemd)
	if !ok {
		t.Fatalf("%T; want *deployer.Systemd", dep)
	}
	want := deployer.SSH{Command: "ssh", User: "zkm", Port: 2222, IdentityFile: "/etc/zk-migrate/id_ed25519",
		ConfigFile: "/etc/zk-migrate/ssh_config", Options: []string{"ProxyJump=bastion"}, ConnectTimeout: 10 * time.Second}
	if s.SSH.Command != want.Command || s.SSH.User != want.User || s.SSH.Port != want.Port || s.SSH.IdentityFile != want.IdentityFile ||
		s.SSH.ConfigFile != want.ConfigFile || len(s.SSH.Options) != 1 || s.SSH.Options[0] != want.Options[0] || s.SSH.ConnectTimeout != want.ConnectTimeout {
		t.Fatalf("ssh %+v; want %+v", s.SSH, want)
	}
	if !s.Sudo || s.StopTimeout != 2*time.Minute || s.StartTimeout != time.Minute || s.Systemctl != "systemctl" {
		t.Fatalf("%+v", s)
	}
	if u := s.Unit(deployer.Process{Kind: deployer.Agent, Name: "b-ag1"}); u != "mesos-agent@b-ag1" {
		t.Fatalf("agent unit %q", u)
	}
}

// TestPreflightChecksTheDeployer: with kind systemd, a host the control
// node cannot reach over SSH fails the pre-flight, before phase 1 touches
// anything, with ssh's error and the fix (here no sshd listens on the
// port; the real OpenSSH client is run).
func TestPreflightChecksTheDeployer(t *testing.T) {
	if _, err := exec.LookPath("ssh"); err != nil {
		t.Skip("no OpenSSH client (apt-get install openssh-client)")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	c, err := control.ParseConfig([]byte(fmt.Sprintf(`
migration: {id: m, source_zk: 127.0.0.1:1, target_zk: 127.0.0.1:2}
mesos:
  zk: zk://127.0.0.1:2181/mesos
  sides:
    a: {masters: [{name: a1, host: 127.0.0.1, port: 5050}]}
    b: {masters: [{name: b1, host: 127.0.0.1, port: 5051}]}
  deployer: {kind: systemd, ssh_port: %d, ssh_config: /dev/null, connect_timeout_sec: 5}
`, port)))
	if err != nil {
		t.Fatal(err)
	}
	_, err = Preflight(c)
	for _, want := range []string{"pre-flight: the deployer (mesos.deployer.kind systemd) cannot tell whether 2 of 2 Mesos processes run",
		"systemctl is-active mesos-master@b1`: ssh failed (exit status 255)", "Connection refused", "the host's ssh server is not reachable"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("pre-flight with no sshd: %v; want %q", err, want)
		}
	}
}
