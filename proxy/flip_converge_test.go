package proxy_test

import (
	"context"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/fence"
	"github.com/zk-migrate/zk-migrate/proxy"
	"github.com/zk-migrate/zk-migrate/proxy/proxytest"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// TestBarrierSwapCopiesWhatNoLiveProxyMirrored: the flip scenario under
// faults (SPEC.md 4.10, "A write no live proxy mirrors"). A proxy
// SIGKILLed as a barrier begins had a client's delete of a register
// committed on the old primary A and not mirrored; the barrier swapped
// the other proxies to B, where the register was still there, and their
// clients wrote it again after a client had seen it gone (porcupine:
// Illegal). Here the dead proxy's writes are made on A directly while
// the barrier holds the live proxy: one znode its client was shown is
// deleted on A, another one is missing on B (a re-create on A never
// mirrored). After the raise and the swap B must be like A for both, as
// the live proxy's client sees them; before, B kept the deleted znode
// and lacked the other.
func TestBarrierSwapCopiesWhatNoLiveProxyMirrored(t *testing.T) {
	root := testRoot(t)
	b := secondary(t)
	cb, _ := connect(t, b.Addrs(), 10*time.Second)
	ca := directConn(t)
	acl := zk.WorldACL(zk.PermAll)
	if _, err := cb.Create(root, nil, 0, acl); err != nil {
		t.Fatal(err)
	}
	gone, back := root+"/deleted-on-a", root+"/recreated-on-a"
	for _, c := range []*zk.Conn{ca, cb} {
		for _, p := range []string{gone, back} {
			if _, err := c.Create(p, []byte("v1"), 0, acl); err != nil {
				t.Fatal(err)
			}
		}
	}
	fencePath := testFence(t)
	p1, err := proxytest.Start(proxy.Config{FencePath: fencePath, Upstream: ens.Addrs(), Secondary: b.Addrs(), Name: "p1", Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p1.Close)
	c1, _ := connect(t, []string{p1.Addr}, 10*time.Second)
	for _, p := range []string{gone, back} {
		if _, _, err := c1.Get(p); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := p1.Hold(ctx, 1, ensemble.Target); err != nil {
		t.Fatal(err)
	}
	m1, _ := p1.HoldMarker(1)
	// The dead proxy's writes, on A only.
	if err := ca.Delete(gone, -1); err != nil {
		t.Fatal(err)
	}
	if err := ca.Delete(back, -1); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.Create(back, []byte("v2"), 0, acl); err != nil {
		t.Fatal(err)
	}
	if err := cb.Delete(back, -1); err != nil { // the mirror of the delete came, not the re-create's
		t.Fatal(err)
	}
	fa, err := zkclient.Dial(ctx, ens.Addrs(), zkclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer fa.Close()
	fb, err := zkclient.Dial(ctx, b.Addrs(), zkclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	var markers []fence.Marker
	if m1.Path != "" {
		markers = append(markers, m1)
	}
	if _, lapsed, err := fence.RaiseIf(ctx, fa, fencePath, 1, ensemble.Target, markers); err != nil || len(lapsed) > 0 {
		t.Fatalf("raise A's fence: %v %v", lapsed, err)
	}
	if _, err := fence.Raise(ctx, fb, fencePath, 1, ensemble.Target); err != nil {
		t.Fatal(err)
	}
	if err := p1.Swap(ctx, 1, ensemble.Target); err != nil {
		t.Fatal(err)
	}
	p1.Release(1)

	if ok, _, err := cb.Exists(gone); err != nil || ok {
		t.Fatalf("B still holds %s, deleted on A before the flip (%v)", gone, err)
	}
	if ok, _, err := c1.Exists(gone); err != nil || ok {
		t.Fatalf("the client sees %s after the flip, deleted before it (%v)", gone, err)
	}
	if d, _, err := cb.Get(back); err != nil || string(d) != "v2" {
		t.Fatalf("B holds %s as %q (%v), want A's \"v2\"", back, d, err)
	}
	if d, _, err := c1.Get(back); err != nil || string(d) != "v2" {
		t.Fatalf("the client reads %s as %q (%v) after the flip, want \"v2\"", back, d, err)
	}
}
