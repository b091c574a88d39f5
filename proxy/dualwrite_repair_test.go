package proxy_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/proxy"
	"github.com/zk-migrate/zk-migrate/proxy/proxytest"
)

// TestDualWriteSessionEndedDuringSecondaryOutageIsStillMirrored: with the
// secondary down, a short session writes (one node readable only with its
// credentials) and closes; the secondary stays down past the session's
// timeout, so its shadow ends with the writes queued. When the secondary
// returns, the writes reach it anyway (a repair session of the proxy,
// presenting the ended session's credentials) and the trees are equal.
func TestDualWriteSessionEndedDuringSecondaryOutageIsStillMirrored(t *testing.T) {
	root := testRoot(t)
	p, cb := startDualProxy(t, root)
	if err := ensB.Kill(1); err != nil {
		t.Fatal(err)
	}
	c, _ := connect(t, []string{p.Addr}, 2*time.Second)
	if err := c.AddAuth("digest", []byte("alice:pw")); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"/a", "/b"} {
		if _, err := c.Create(root+n, []byte("v1"), 0, zk.WorldACL(zk.PermAll)); err != nil {
			t.Fatalf("create %s with the secondary down: %v", n, err)
		}
	}
	if _, err := c.Set(root+"/a", []byte("v2"), -1); err != nil {
		t.Fatal(err)
	}
	alice := zk.DigestACL(zk.PermAll, "alice", "pw")
	if _, err := c.Create(root+"/private", []byte("alice's"), 0, alice); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Set(root, []byte("root data"), -1); err != nil {
		t.Fatal(err)
	}
	c.Close()
	// Down for longer than the session's timeout: its shadow ends.
	time.Sleep(6 * time.Second)
	if v := metricValue(t, p.Registry, "zkmigrate_proxy_mirror_failures_total", "reason", "session_ended"); v != 0 {
		t.Errorf("mirror_failures_total{reason=session_ended} = %v, want 0: the ended session's writes were dropped", v)
	}
	if err := ensB.Restart(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	waitMirrored(t, p)
	if err := cb.AddAuth("digest", []byte("alice:pw")); err != nil {
		t.Fatal(err)
	}
	d, _, err := cb.Get(root + "/private")
	if err != nil || string(d) != "alice's" {
		t.Fatalf("the protected node on B: %q, %v; want it mirrored", d, err)
	}
	acl, _, err := cb.GetACL(root + "/private")
	if err != nil || len(acl) != 1 || acl[0] != alice[0] {
		t.Fatalf("ACL on B = %v, %v; want %v", acl, err, alice)
	}
	if err := cb.Delete(root+"/private", -1); err != nil {
		t.Fatal(err)
	}
	a := directConn(t)
	if err := a.AddAuth("digest", []byte("alice:pw")); err != nil {
		t.Fatal(err)
	}
	if err := a.Delete(root+"/private", -1); err != nil {
		t.Fatal(err)
	}
	assertSameTree(t, ens.Addrs(), ensB.Addrs(), root)
}

// TestDualWriteBacklogSurvivesProxyRestartWithStateDir: writes queued for
// a secondary that is down are recorded in --state-dir; a proxy restarted
// with it mirrors them once the secondary returns, though no client
// writes those paths again.
func TestDualWriteBacklogSurvivesProxyRestartWithStateDir(t *testing.T) {
	root := testRoot(t)
	b := secondary(t)
	cb, _ := connect(t, b.Addrs(), 10*time.Second)
	if _, err := cb.Create(root, nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	cfg := proxy.Config{FencePath: testFence(t), Upstream: ens.Addrs(), Secondary: b.Addrs(), StateDir: t.TempDir(), Logger: testLogger(t)}
	p1, err := proxytest.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := ensB.Kill(1); err != nil {
		t.Fatal(err)
	}
	c, _ := connect(t, []string{p1.Addr}, 4*time.Second)
	for i := 0; i < 5; i++ {
		if _, err := c.Create(fmt.Sprintf("%s/n%d", root, i), []byte("x"), 0, zk.WorldACL(zk.PermAll)); err != nil {
			t.Fatalf("write %d with the secondary down: %v", i, err)
		}
	}
	if _, err := c.Set(root, []byte("root data"), -1); err != nil {
		t.Fatal(err)
	}
	c.Close()
	p1.Close()
	if err := ensB.Restart(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	p2, err := proxytest.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p2.Close)
	if n := p2.MirrorBacklog(); n != 6 {
		t.Errorf("backlog after the restart: %d paths, want 6", n)
	}
	waitMirrored(t, p2)
	assertSameTree(t, ens.Addrs(), ensB.Addrs(), root)
}
