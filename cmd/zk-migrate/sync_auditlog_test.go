package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/control"
	"github.com/zk-migrate/zk-migrate/zktest"
)

// TestSyncAuditLogIsVerifiable runs continuous `zk-migrate sync
// --audit-log`, makes a conflict (the same znode written on A and on B
// while the sync process is stopped), and checks the log holds it as a
// hash-chained entry that `zk-migrate audit verify --file` accepts, and
// rejects it once the conflict is edited.
func TestSyncAuditLogIsVerifiable(t *testing.T) {
	if testing.Short() {
		t.Skip("starts ZooKeeper")
	}
	a, b := startPair(t, context.Background(), "alog")
	conns := make([]*zk.Conn, 2)
	for i, e := range []*zktest.Ensemble{a, b} {
		c, _, err := zk.Connect(e.Addrs(), 10*time.Second, zk.WithLogInfo(false))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
	}
	for _, p := range []string{"/mesos", "/mesos/x"} {
		if _, err := conns[0].Create(p, []byte("v"), 0, zk.WorldACL(zk.PermAll)); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	logPath := filepath.Join(dir, "audit.jsonl")
	cmd := exec.Command(bin, "sync", "--source", a.ConnectString(), "--target", b.ConnectString(), "--paths", "/mesos",
		"--metrics-addr", "", "--audit-log", logPath)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	waitFor(t, func() bool { ok, _, _ := conns[1].Exists("/mesos/x"); return ok })
	time.Sleep(500 * time.Millisecond) // the continuous sync watches both sides

	_ = cmd.Process.Signal(syscall.SIGSTOP)
	if _, err := conns[0].Set("/mesos/x", []byte("on-a"), -1); err != nil {
		t.Fatal(err)
	}
	if _, err := conns[1].Set("/mesos/x", []byte("on-b"), -1); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Process.Signal(syscall.SIGCONT)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		b, _ := os.ReadFile(logPath)
		if strings.Contains(string(b), `"action":"conflict"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no conflict in the audit log %q; sync said:\n%s", b, out.String())
		}
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	_ = cmd.Wait()
	if res, code := run(t, "audit", "verify", "--file", logPath); code != 0 || !strings.Contains(res, "verified") {
		t.Fatalf("audit verify of the sync's log: exit %d\n%s", code, res)
	}
	lines, _ := os.ReadFile(logPath)
	first, _, _ := strings.Cut(string(lines), "\n")
	var e control.AuditEntry
	if err := json.Unmarshal([]byte(first), &e); err != nil {
		t.Fatal(err)
	}
	e.Detail = strings.Replace(e.Detail, "/mesos/x", "/mesos/y", 1) // the conflict rewritten, its hash kept
	forged := e.ExportJSON()
	edited := filepath.Join(dir, "edited.jsonl")
	_ = os.WriteFile(edited, append(forged, '\n'), 0o600)
	if res, code := run(t, "audit", "verify", "--file", edited); code != exitDifferent || !strings.Contains(res, "line 1 (seq 1)") {
		t.Fatalf("an edited sync log: exit %d\n%s", code, res)
	}
}
