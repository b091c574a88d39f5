package proxy_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/proxy"
	"github.com/zk-migrate/zk-migrate/proxy/proxytest"
)

// TestLateFlipTakesThePeersVersions: a proxy that missed a flip (the demo's
// framework host's proxy, cut from B during the rollback's reverse flip)
// catches up with a one-shot flip when the ensembles' versions of a znode
// have drifted since the others flipped (here A got one write more: the
// mirror writes the secondary once per pass, not once per client write).
// Its clients must see the versions the peer's clients see, and a
// conditional write with a version read through the peer must succeed
// through it. Without the peer's offsets the late proxy numbered the
// register one version apart (the demo's register history: a version
// acknowledged twice, Illegal).
func TestLateFlipTakesThePeersVersions(t *testing.T) {
	root := testRoot(t)
	b := secondary(t)
	cb, _ := connect(t, b.Addrs(), 10*time.Second)
	acl := zk.WorldACL(zk.PermAll)
	if _, err := cb.Create(root, nil, 0, acl); err != nil {
		t.Fatal(err)
	}
	cfg := proxy.Config{FencePath: testFence(t), Upstream: ens.Addrs(), Secondary: b.Addrs(), Logger: testLogger(t)}
	p1, err := proxytest.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p1.Close)
	cfg.PeerOffsets = func(_ context.Context, epoch int64, primary ensemble.Name) (map[string]proxy.PathOffset, error) {
		o := p1.VersionOffsets() // what GET /admin/v1/versions answers
		if o.Epoch != epoch || o.Primary != primary {
			return nil, errors.New("the peer does not hold that epoch")
		}
		return o.Paths, nil
	}
	p2, err := proxytest.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p2.Close)
	c1, _ := connect(t, []string{p1.Addr}, 4*time.Second)
	c2, _ := connect(t, []string{p2.Addr}, 4*time.Second)
	r := root + "/r"
	if _, err := c1.Create(r, []byte("0"), 0, acl); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ { // version 3 on A
		if _, err := c1.Set(r, []byte("1"), -1); err != nil {
			t.Fatal(err)
		}
	}
	// Both proxies' clients are shown it; the second's server may be a
	// follower behind the first's: sync first, as a client that must see
	// another client's write does.
	if _, err := c2.Sync(r); err != nil {
		t.Fatal(err)
	}
	if _, st, err := c2.Get(r); err != nil || st.Version != 3 {
		t.Fatalf("read through the second proxy: version %d %v", st.Version, err)
	}
	waitMirrored(t, p1)
	waitMirrored(t, p2)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// The first proxy flips to B; the second misses it.
	if err := p1.Flip(ctx, 1, ensemble.Target); err != nil {
		t.Fatal(err)
	}
	if _, err := c1.Set(r, []byte("2"), 3); err != nil {
		t.Fatalf("conditional write after the flip with the version read before: %v", err)
	}
	waitMirrored(t, p1)
	// A drifts from B by one version (same data: nothing to mirror).
	if _, err := directConn(t).Set(r, []byte("2"), -1); err != nil {
		t.Fatal(err)
	}
	// The second proxy catches up, as it does when it reads the fence.
	if err := p2.Flip(ctx, 1, ensemble.Target); err != nil {
		t.Fatal(err)
	}
	_, s1, err := c1.Get(r)
	if err != nil {
		t.Fatal(err)
	}
	_, s2, err := c2.Get(r)
	if err != nil {
		t.Fatal(err)
	}
	if s1.Version != 4 || s2.Version != s1.Version {
		t.Fatalf("after the late flip: version %d through the first proxy (want 4), %d through the late one (want the same)", s1.Version, s2.Version)
	}
	st, err := c2.Set(r, []byte("3"), s1.Version)
	if err != nil || st.Version != 5 {
		t.Fatalf("conditional write through the late proxy with the version read through the first: version %d %v, want 5", st.Version, err)
	}
	if _, s1, err = c1.Get(r); err != nil || s1.Version != 5 {
		t.Fatalf("the first proxy's client reads version %d %v, want 5", s1.Version, err)
	}
}
