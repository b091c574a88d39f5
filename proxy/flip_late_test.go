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

// TestLateFlipShowsZnodesCreatedSinceTheRaiseByTheirOwnVersions: the
// flip scenario under faults (SPEC.md 4.10, "Versions"). The restarted
// proxy caught up with the rollback by its fence seconds after the
// barrier, while its peers' clients deleted and created a register again
// on the new primary, the mirror one write behind on the old one. Its
// own version reading made that difference an offset, and it showed the
// register one version below its peers (two blind writes acknowledged
// as v6: Illegal). A znode created on the new primary since the raise is
// shown by its own versions through every proxy that swapped in the
// barrier, so a late flip must not offset it.
func TestLateFlipShowsZnodesCreatedSinceTheRaiseByTheirOwnVersions(t *testing.T) {
	root := testRoot(t)
	b := secondary(t)
	cb, _ := connect(t, b.Addrs(), 10*time.Second)
	ca := directConn(t)
	acl := zk.WorldACL(zk.PermAll)
	if _, err := cb.Create(root, nil, 0, acl); err != nil {
		t.Fatal(err)
	}
	r := root + "/register"
	for _, c := range []*zk.Conn{ca, cb} {
		if _, err := c.Create(r, []byte("0"), 0, acl); err != nil {
			t.Fatal(err)
		}
	}
	fencePath := testFence(t)
	p1, err := proxytest.Start(proxy.Config{FencePath: fencePath, Upstream: ens.Addrs(), Secondary: b.Addrs(), Name: "p1", Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p1.Close)
	// The late proxy renews its lease rarely: it flips when the test says.
	p2, err := proxytest.Start(proxy.Config{FencePath: fencePath, Upstream: ens.Addrs(), Secondary: b.Addrs(), Name: "p2",
		FenceLease: time.Minute, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p2.Close)
	c1, _ := connect(t, []string{p1.Addr}, 10*time.Second)
	c2, _ := connect(t, []string{p2.Addr}, 10*time.Second)
	for _, c := range []*zk.Conn{c1, c2} {
		if _, _, err := c.Get(r); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// The barrier, without the second proxy.
	if _, err := p1.Hold(ctx, 1, ensemble.Target); err != nil {
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
	if _, err := fence.Raise(ctx, fa, fencePath, 1, ensemble.Target); err != nil {
		t.Fatal(err)
	}
	if _, err := fence.Raise(ctx, fb, fencePath, 1, ensemble.Target); err != nil {
		t.Fatal(err)
	}
	if err := p1.Swap(ctx, 1, ensemble.Target); err != nil {
		t.Fatal(err)
	}
	p1.Release(1)
	// The first proxy's client creates the register again on B and writes
	// it twice; A's copy is behind (the mirror one pass late).
	if err := c1.Delete(r, -1); err != nil {
		t.Fatal(err)
	}
	if _, err := c1.Create(r, []byte("1"), 0, acl); err != nil {
		t.Fatal(err)
	}
	waitMirrored(t, p1)
	for i := 0; i < 2; i++ {
		if _, err := cb.Set(r, []byte("1"), -1); err != nil { // same data: nothing for the mirror to copy
			t.Fatal(err)
		}
	}
	_, st1, err := c1.Get(r)
	if err != nil {
		t.Fatal(err)
	}
	// The late proxy catches up (a one-shot flip, no peer to ask).
	if err := p2.Flip(ctx, 1, ensemble.Target); err != nil {
		t.Fatal(err)
	}
	_, st2, err := c2.Get(r)
	if err != nil {
		t.Fatal(err)
	}
	if st2.Version != st1.Version {
		t.Fatalf("the late proxy shows the register created since the flip at version %d, its peer at %d", st2.Version, st1.Version)
	}
	if _, err := c2.Set(r, []byte("2"), st1.Version); err != nil {
		t.Fatalf("a conditional write through the late proxy with its peer's version: %v", err)
	}
}
