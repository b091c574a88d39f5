package deployer

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// testSSHD is a real OpenSSH server on 127.0.0.1 for the tests: its own
// host key, a client key it accepts, and a known_hosts file naming it.
type testSSHD struct {
	Port       int
	ClientKey  string // private key the server accepts
	KnownHosts string // known_hosts with the server's key
	dir        string
}

// ssh is an SSH client configuration that reaches the server: the
// client key, strict host key checking against KnownHosts, and no
// ~/.ssh/config.
func (d *testSSHD) ssh() SSH {
	return SSH{Port: d.Port, IdentityFile: d.ClientKey, ConfigFile: os.DevNull,
		Options: []string{"StrictHostKeyChecking=yes", "UserKnownHostsFile=" + d.KnownHosts}}
}

// newKey makes an ed25519 key pair at path (path.pub the public key).
func newKey(t *testing.T, path string) {
	t.Helper()
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "zkm-test", "-f", path).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
}

// startSSHD runs sshd -D on a free port of 127.0.0.1 until the test ends.
// It skips the test when sshd is not installed (apt-get install
// openssh-server; scripts/deps.sh installs it).
func startSSHD(t *testing.T) *testSSHD {
	t.Helper()
	sshd, err := exec.LookPath("sshd")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/sshd"); serr != nil {
			t.Skip("sshd not found (apt-get install openssh-server, or make deps): the systemd deployer is tested over real SSH")
		}
		sshd = "/usr/sbin/sshd"
	}
	if os.Geteuid() == 0 { // sshd as root needs its privilege separation directory
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			t.Fatal(err)
		}
	}
	d := &testSSHD{Port: freePort(t), dir: t.TempDir()}
	hostKey := filepath.Join(d.dir, "host_key")
	newKey(t, hostKey)
	d.ClientKey = filepath.Join(d.dir, "client_key")
	newKey(t, d.ClientKey)
	pub, err := os.ReadFile(d.ClientKey + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	authorized := filepath.Join(d.dir, "authorized_keys")
	if err := os.WriteFile(authorized, pub, 0o600); err != nil {
		t.Fatal(err)
	}
	hostPub, err := os.ReadFile(hostKey + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(hostPub))
	d.KnownHosts = filepath.Join(d.dir, "known_hosts")
	if err := os.WriteFile(d.KnownHosts, []byte(fmt.Sprintf("[127.0.0.1]:%d %s %s\n", d.Port, f[0], f[1])), 0o600); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(d.dir, "sshd_config")
	// StrictModes no: the key files live under /tmp (world-writable).
	cfg := fmt.Sprintf(`ListenAddress 127.0.0.1:%d
HostKey %s
AuthorizedKeysFile %s
PidFile none
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin prohibit-password
LogLevel VERBOSE
`, d.Port, hostKey, authorized)
	if err := os.WriteFile(conf, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(d.dir, "sshd.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(sshd, "-D", "-e", "-f", conf)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", sshd, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }() // reaps sshd; ends when it exits
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		<-exited
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("sshd log:\n%s", b)
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", d.Port), time.Second)
		if err == nil {
			c.Close()
			return d
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(logPath)
			t.Fatalf("sshd exited: %s", b)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("sshd does not listen on port %d: %v", d.Port, err)
		}
	}
}
