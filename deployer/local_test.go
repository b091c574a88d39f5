package deployer

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/zk-migrate/zk-migrate/zktest"
)

func freePort(t *testing.T) int {
	t.Helper()
	// Below the ephemeral range: a port from it could be taken by an
	// outgoing connection before the process started later binds it.
	p, err := zktest.StablePort()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestLocalDeployerContract runs real bin/mesos-sim processes: Start and
// Stop are idempotent, a process is found without its pid file (a control
// node killed before writing it), Stop waits for the exit, and a process
// that cannot start is an error with its log.
func TestLocalDeployerContract(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs bin/mesos-sim")
	}
	dir := t.TempDir()
	bin := mesosSim(t)
	// No ZooKeeper answers here: an agent serves HTTP and keeps trying.
	l := &Local{Binary: bin, Dir: filepath.Join(dir, "run"), ZK: "zk://127.0.0.1:1/mesos", Quorum: 1}
	ctx := context.Background()
	p := Process{Kind: Agent, Name: "ag1", Side: "B", Host: "127.0.0.1", Port: freePort(t), Hostname: "agent1"}
	t.Cleanup(func() { _ = l.Stop(ctx, p) })
	if err := l.Start(ctx, p); err != nil {
		t.Fatal(err)
	}
	pid := l.PID(p)
	if err := l.Start(ctx, p); err != nil || l.PID(p) != pid || pid == 0 {
		t.Fatalf("second start: %v, pid %d then %d; want the same process", err, pid, l.PID(p))
	}
	if err := os.Remove(filepath.Join(l.Dir, "ag1.pid")); err != nil {
		t.Fatal(err)
	}
	if ok, _ := l.Running(ctx, p); !ok || l.PID(p) != pid {
		t.Fatalf("without its pid file the process is not found (running %v, pid %d, want %d)", ok, l.PID(p), pid)
	}
	other := p
	other.Port = freePort(t)
	if ok, _ := l.Running(ctx, other); ok {
		t.Fatal("a process on another port counts as running")
	}
	if err := l.Stop(ctx, p); err != nil {
		t.Fatal(err)
	}
	if ok, _ := l.Running(ctx, p); ok {
		t.Fatal("running after Stop returned")
	}
	if err := l.Stop(ctx, p); err != nil {
		t.Fatalf("stopping a stopped process: %v", err)
	}

	// A master with --quorum 0 exits at once: Start says so, with its log.
	bad := &Local{Binary: bin, Dir: l.Dir, ZK: l.ZK, Quorum: 0}
	m := Process{Kind: Master, Name: "m1", Side: "A", Host: "127.0.0.1", Port: freePort(t)}
	if err := bad.Start(ctx, m); err == nil || !strings.Contains(err.Error(), "it exited") || !strings.Contains(err.Error(), "--quorum is required") {
		t.Fatalf("start of a master that exits: %v; want the exit and its log", err)
	}
}
