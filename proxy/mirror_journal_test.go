package proxy_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/proxy"
	"github.com/zk-migrate/zk-migrate/proxy/proxytest"
)

// TestBacklogFileHoldsEveryAcknowledgedWrite: with --state-dir, a write the
// proxy acknowledges and has not mirrored (the secondary is down) is in
// the backlog file the moment the client has its reply, so a proxy
// SIGKILLed at any instant has recorded it (the file is what survives the
// process). Before, the file was rewritten every 250 ms: a SIGKILL lost the
// writes acknowledged since the last rewrite, and the flip scenario under
// faults lost /reg/acks/w2-00240 that way (acknowledged through the killed
// proxy, never on the new primary).
func TestBacklogFileHoldsEveryAcknowledgedWrite(t *testing.T) {
	root := testRoot(t)
	b := secondary(t)
	cb, _ := connect(t, b.Addrs(), 10*time.Second)
	if _, err := cb.Create(root, nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p, err := proxytest.Start(proxy.Config{FencePath: testFence(t), Upstream: ens.Addrs(), Secondary: b.Addrs(), StateDir: dir, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	if err := ensB.Kill(1); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ensB.Restart(context.Background(), 1) })
	c, _ := connect(t, []string{p.Addr}, 4*time.Second)
	for i := 0; i < 20; i++ {
		n := fmt.Sprintf("%s/w%02d", root, i)
		if _, err := c.Create(n, nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(dir, "mirror-backlog"))
		if err != nil || !strings.Contains(string(b), n+"\n") {
			t.Fatalf("write %d acknowledged, not mirrored (B down), and not in the backlog file: a SIGKILL now loses it (%v):\n%s", i, err, b)
		}
		time.Sleep(7 * time.Millisecond)
	}
}

// TestBacklogFileForgetsMirroredWrites: once a write's mirror is verified,
// the backlog file no longer lists it as waiting, at once (not at the next
// rewrite), so a proxy SIGKILLed then and restarted after a flip it missed
// does not repair, or report as a conflict, a write that had reached the
// new primary (the flip scenario's hot registers were reported CONFLICT
// that way).
func TestBacklogFileForgetsMirroredWrites(t *testing.T) {
	root := testRoot(t)
	b := secondary(t)
	cb, _ := connect(t, b.Addrs(), 10*time.Second)
	if _, err := cb.Create(root, nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p, err := proxytest.Start(proxy.Config{FencePath: testFence(t), Upstream: ens.Addrs(), Secondary: b.Addrs(), StateDir: dir, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	c, _ := connect(t, []string{p.Addr}, 4*time.Second)
	for i := 0; i < 20; i++ {
		n := fmt.Sprintf("%s/w%02d", root, i)
		if _, err := c.Create(n, nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
			t.Fatal(err)
		}
		waitMirrored(t, p)
		b, err := os.ReadFile(filepath.Join(dir, "mirror-backlog"))
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		waiting := false // the last line naming n lists it, or a "-" line drops it
		for _, l := range strings.Split(string(b), "\n") {
			switch l {
			case n:
				waiting = true
			case "-" + n:
				waiting = false
			}
		}
		if waiting {
			t.Fatalf("write %d is mirrored (backlog 0) but the backlog file still lists it as waiting:\n%s", i, b)
		}
	}
}
