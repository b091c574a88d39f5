package deployer

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/zktest"
)

// shimHost lays out a "host" for the systemd deployer under a temp dir:
// the systemctl and journalctl stand-ins of testdata/ (systemd itself
// does not run in this container or in CI, so they emulate the units:
// start, stop and is-active of mesos-master@NAME and mesos-agent@NAME,
// running bin/mesos-sim as the units' ExecStart would), mesos-sim, and
// one env file per unit. SSH to it is real.
type shimHost struct{ root string }

func newShimHost(t *testing.T) *shimHost {
	t.Helper()
	h := &shimHost{root: t.TempDir()}
	for _, d := range []string{"bin", "etc/mesos-master", "etc/mesos-agent"} {
		if err := os.MkdirAll(filepath.Join(h.root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []struct{ src, dst string }{
		{"testdata/systemctl", "bin/systemctl"}, {"testdata/journalctl", "bin/journalctl"}, {mesosSim(t), "bin/mesos-sim"},
	} {
		b, err := os.ReadFile(f.src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(h.root, f.dst), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return h
}

// env writes p's unit's EnvironmentFile.
func (h *shimHost) env(t *testing.T, p Process, vars ...string) {
	t.Helper()
	vars = append(vars, "MESOS_IP="+p.Host, "MESOS_PORT="+strconv.Itoa(p.Port), "MESOS_HOSTNAME="+p.Name,
		"MESOS_WORK_DIR="+filepath.Join(h.root, "work", p.Name))
	path := filepath.Join(h.root, "etc", "mesos-"+string(p.Kind), p.Name+".env")
	if err := os.WriteFile(path, []byte(strings.Join(vars, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// pid is the pid of unit's process as the stand-in recorded it, if it
// lives.
func (h *shimHost) pid(unit string) int {
	b, err := os.ReadFile(filepath.Join(h.root, "run", unit+".pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	// Not a zombie: in a container whose PID 1 does not reap, an orphan
	// that exited stays one.
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if i := strings.LastIndexByte(string(stat), ')'); err != nil || i < 0 || len(stat) < i+3 || stat[i+2] == 'Z' || stat[i+2] == 'X' {
		return 0
	}
	return pid
}

func (h *shimHost) deployer(ssh SSH) *Systemd {
	return &Systemd{SSH: ssh, Systemctl: filepath.Join(h.root, "bin/systemctl"), Journalctl: filepath.Join(h.root, "bin/journalctl"),
		StartTimeout: 2 * time.Minute, StopTimeout: 2 * time.Minute}
}

// TestSystemdDeployerOverSSH drives units through a real sshd with the
// OpenSSH client (BatchMode, strict host key checking, an identity file);
// systemd is emulated by testdata/systemctl (see shimHost). Against a real
// ZooKeeper: Start returns once the master serves HTTP and it takes its
// json.info_; Start again changes nothing; a second Systemd value (another
// control node) sees it running; Stop is graceful (its json.info_ is gone
// the moment Stop returns: SIGTERM closed its session, where a SIGKILL
// would leave it until the session expires); Stop again succeeds; Running
// is then false. A master that exits at start, a unit not installed, a
// refused key and a host without sshd are errors that say where, what,
// and the fix.
func TestSystemdDeployerOverSSH(t *testing.T) {
	if testing.Short() {
		t.Skip("runs sshd, ZooKeeper and bin/mesos-sim")
	}
	sshd := startSSHD(t)
	host := newShimHost(t)
	ctx := context.Background()
	ens, err := zktest.Start(ctx, zktest.Config{Servers: 1, Name: "deployer"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ens.Close)
	zkURL := "zk://" + ens.ConnectString() + "/mesos"

	d := host.deployer(sshd.ssh())
	m := Process{Kind: Master, Name: "b-m1", Side: "B", Host: "127.0.0.1", Port: freePort(t)}
	host.env(t, m, "MESOS_ZK="+zkURL, "MESOS_QUORUM=1")
	t.Cleanup(func() { _ = d.Stop(ctx, m) })

	if err := d.Start(ctx, m); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(m.URL() + "/health")
	if err != nil {
		t.Fatalf("Start returned but the master does not serve HTTP: %v", err)
	}
	resp.Body.Close()
	conn, _, err := zk.Connect(ens.Addrs(), 10*time.Second, zk.WithLogInfo(false))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	infos := func() []string {
		kids, _, err := conn.Children("/mesos")
		if err != nil && err != zk.ErrNoNode {
			t.Fatal(err)
		}
		return slices.DeleteFunc(kids, func(k string) bool { return !strings.HasPrefix(k, "json.info_") })
	}
	for deadline := time.Now().Add(time.Minute); len(infos()) != 1; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no master's json.info_ in ZooKeeper: %v; %s", infos(), d.Describe(m))
		}
	}
	unit := d.Unit(m)
	if unit != "mesos-master@b-m1" {
		t.Fatalf("unit %q; want mesos-master@b-m1", unit)
	}
	pid := host.pid(unit)
	if err := d.Start(ctx, m); err != nil || host.pid(unit) != pid || pid == 0 {
		t.Fatalf("second start: %v, pid %d then %d; want the same process", err, pid, host.pid(unit))
	}
	other := host.deployer(sshd.ssh()) // another control node: nothing shared but the host
	if ok, err := other.Running(ctx, m); err != nil || !ok {
		t.Fatalf("running from a second deployer: %v, %v; want true", ok, err)
	}
	if err := other.Stop(ctx, m); err != nil {
		t.Fatal(err)
	}
	if got := infos(); len(got) != 0 {
		t.Fatalf("json.info_ %v still there when Stop returned: the master was not stopped gracefully", got)
	}
	if host.pid(unit) != 0 {
		t.Fatalf("process %d alive after Stop returned", pid)
	}
	if ok, err := d.Running(ctx, m); err != nil || ok {
		t.Fatalf("running after Stop: %v, %v; want false", ok, err)
	}
	if err := d.Stop(ctx, m); err != nil {
		t.Fatalf("stopping a stopped unit: %v", err)
	}

	// A master that exits at once (--quorum 0): Start says so, with its
	// journal.
	bad := Process{Kind: Master, Name: "b-m2", Side: "B", Host: "127.0.0.1", Port: freePort(t)}
	host.env(t, bad, "MESOS_ZK="+zkURL, "MESOS_QUORUM=0")
	err = d.Start(ctx, bad)
	for _, want := range []string{"mesos-master@b-m2 on 127.0.0.1 started, then went inactive", "last journal lines of mesos-master@b-m2", "--quorum is required"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("start of a master that exits: %v; want %q", err, want)
		}
	}

	// A unit that is not installed (no env file): where, what, the exit
	// status, systemctl's message, the fix.
	ag := Process{Kind: Agent, Name: "b-ag1", Side: "B", Host: "127.0.0.1", Port: freePort(t)}
	err = d.Start(ctx, ag)
	for _, want := range []string{"on 127.0.0.1", "systemctl start mesos-agent@b-ag1`: exit status 5", "Unit mesos-agent@b-ag1.service not found",
		"fix: install the unit on 127.0.0.1: deploy/systemd/mesos-agent@.service"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("start of a unit not installed: %v; want %q", err, want)
		}
	}

	// A process that ignores SIGTERM: Stop fails when its time is up and
	// the process lives on (never SIGKILL).
	hang := Process{Kind: Agent, Name: "b-ag2", Side: "B", Host: "127.0.0.1", Port: freePort(t)}
	host.env(t, hang, fmt.Sprintf("EXEC_START='trap \"\" TERM; exec python3 -m http.server %d --bind 127.0.0.1'", hang.Port))
	t.Cleanup(func() {
		if pid := host.pid(d.Unit(hang)); pid != 0 {
			_ = syscall.Kill(pid, syscall.SIGKILL) // the test's own process
		}
	})
	if err := d.Start(ctx, hang); err != nil {
		t.Fatal(err)
	}
	short := host.deployer(sshd.ssh())
	short.StopTimeout = 3 * time.Second
	err = short.Stop(ctx, hang)
	for _, want := range []string{"`systemctl stop mesos-agent@b-ag2` on 127.0.0.1 did not return within 3s; not killed"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("stop of a process that ignores SIGTERM: %v; want %q", err, want)
		}
	}
	if ok, err := d.Running(ctx, hang); err != nil || !ok || host.pid(d.Unit(hang)) == 0 {
		t.Fatalf("after a stop that timed out: running %v, %v, pid %d; want the process alive", ok, err, host.pid(d.Unit(hang)))
	}

	// A key the host refuses, and a host without sshd: errors, never
	// "not running", with the command to check by hand.
	refused := sshd.ssh()
	refused.IdentityFile = filepath.Join(t.TempDir(), "other_key")
	newKey(t, refused.IdentityFile)
	_, err = host.deployer(refused).Running(ctx, m)
	for _, want := range []string{"ssh failed (exit status 255)", "Permission denied", "the host refused the key", "authorized_keys",
		"BatchMode=yes", fmt.Sprintf("-p %d", sshd.Port), "127.0.0.1 true"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("refused key: %v; want %q", err, want)
		}
	}
	down := sshd.ssh()
	down.Port = freePort(t)
	_, err = host.deployer(down).Running(ctx, m)
	for _, want := range []string{"ssh failed (exit status 255)", "Connection refused", "not reachable"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("host without sshd: %v; want %q", err, want)
		}
	}
}
