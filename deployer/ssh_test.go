package deployer

import (
	"strings"
	"testing"
	"time"
)

// TestSSHCommandLine: what the operator pastes to reproduce a call is the
// command the deployer runs: BatchMode and ConnectTimeout first (ssh keeps
// the first value of an option), the user's options after, sudo -n before
// the configured systemctl, arguments quoted for the remote shell.
func TestSSHCommandLine(t *testing.T) {
	s := &Systemd{SSH: SSH{User: "zkm", Port: 2222, IdentityFile: "/k", ConfigFile: "/c", Options: []string{"ProxyJump=bastion"},
		ConnectTimeout: 1500 * time.Millisecond}, Sudo: true, Systemctl: "systemctl --user", MasterUnit: "zkm-{name}.service"}
	p := Process{Kind: Master, Name: "b-m1", Host: "10.0.1.1"}
	got := s.SSH.CommandLine(p.Host, s.tool(s.Systemctl, "systemctl", "start", s.Unit(p))...)
	want := "ssh -T -o BatchMode=yes -o ConnectTimeout=2 -F /c -l zkm -p 2222 -i /k -o IdentitiesOnly=yes -o ProxyJump=bastion -- 10.0.1.1 " +
		"'sudo -n systemctl --user start zkm-b-m1.service'"
	if got != want {
		t.Fatalf("\ngot  %s\nwant %s", got, want)
	}
	if q := shellJoin([]string{"echo", "it's $HOME"}); q != `echo 'it'\''s $HOME'` {
		t.Fatalf("quoting: %s", q)
	}
	if !strings.HasSuffix((&Systemd{}).Unit(Process{Kind: Agent, Name: "a"}), "mesos-agent@a") {
		t.Fatal("default agent unit")
	}
}
