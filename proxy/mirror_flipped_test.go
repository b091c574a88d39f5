package proxy_test

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/fence"
	"github.com/zk-migrate/zk-migrate/proxy"
	"github.com/zk-migrate/zk-migrate/proxy/proxytest"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// TestStrandedWritesReachTheNewPrimary: a proxy acknowledges writes on A
// while B is down, records them in its --state-dir backlog and stops. B
// returns and a flip to B is made without it (the fences raised to epoch
// 1, B primary); then a client of B changes one of those znodes and adds
// a child beside another. The proxy comes back on its stale flag (A,
// epoch 0), re-queues its backlog, meets B's raised fence, catches up with
// the flip, and repairs the stranded writes onto B: a create (under a
// parent unchanged since the flip, and under one whose children changed),
// a setData and a delete reach B; the znode B's client changed after the
// flip keeps B's value (reported as flip_conflict) and A follows it.
// Without the repair the fence refused the mirror and the writes never
// reached B, the new primary (issue 11, TestFlipScenarioUnderFaults).
// The same when the proxy comes back on the recorded primary (B, epoch
// 1): its recorded backlog, from epoch 0 on A, is stranded at start; and
// when the proxy is never stopped but cut off from B (its dials to B
// refused) through the flip: its in-memory backlog meets B's fence when
// it reaches B again.
func TestStrandedWritesReachTheNewPrimary(t *testing.T) {
	t.Run("stale flag", func(t *testing.T) { testStrandedWrites(t, "stale flag") })
	t.Run("recorded primary", func(t *testing.T) { testStrandedWrites(t, "recorded primary") })
	t.Run("cut off", func(t *testing.T) { testStrandedWrites(t, "cut off") })
}

func testStrandedWrites(t *testing.T, mode string) {
	root := testRoot(t)
	b := secondary(t)
	cb, _ := connect(t, b.Addrs(), 10*time.Second)
	ca := directConn(t)
	if _, err := cb.Create(root, nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	fpath := testFence(t)
	var cutOff atomic.Bool // dials to B refused
	isB := map[string]bool{}
	for _, a := range b.Addrs() {
		isB[a] = true
	}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		if cutOff.Load() && isB[addr] {
			return nil, errors.New("cut off from B by the test")
		}
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	cfg := proxy.Config{FencePath: fpath, Upstream: ens.Addrs(), Secondary: b.Addrs(), StateDir: t.TempDir(), Logger: testLogger(t), Dial: dial}
	p1, err := proxytest.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := connect(t, []string{p1.Addr}, 4*time.Second)
	// Mirrored while B is up (the proxy learns B's fence version).
	for _, n := range []string{"/kept", "/changed", "/gone", "/quiet"} {
		if _, err := c.Create(root+n, []byte("before"), 0, zk.WorldACL(zk.PermAll)); err != nil {
			t.Fatal(err)
		}
	}
	waitMirrored(t, p1)
	cutOff.Store(mode == "cut off")
	if err := ensB.Kill(1); err != nil {
		t.Fatal(err)
	}
	// Acknowledged on A, never mirrored: B is down.
	writes := []func() error{
		func() error {
			_, err := c.Create(root+"/acked", []byte("acked"), 0, zk.WorldACL(zk.PermAll))
			return err
		},
		func() error {
			_, err := c.Create(root+"/quiet/acked2", []byte("acked2"), 0, zk.WorldACL(zk.PermAll))
			return err
		},
		func() error { _, err := c.Set(root+"/kept", []byte("v2"), -1); return err },
		func() error { _, err := c.Set(root+"/changed", []byte("v2"), -1); return err },
		func() error { return c.Delete(root+"/gone", -1) },
	}
	for i, w := range writes {
		if err := w(); err != nil {
			t.Fatalf("write %d with the secondary down: %v", i, err)
		}
	}
	p2 := p1
	if mode != "cut off" {
		c.Close()
		p1.Close()
	} else {
		t.Cleanup(p1.Close)
	}
	if err := ensB.Restart(context.Background(), 1); err != nil {
		t.Fatal(err)
	}

	// The flip the proxy misses: the control plane raises both fences
	// (the old primary's first), and B's clients write.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, addrs := range [][]string{ens.Addrs(), b.Addrs()} {
		fc, err := zkclient.Dial(ctx, addrs, zkclient.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := fence.Raise(ctx, fc, fpath, 1, ensemble.Target); err != nil {
			t.Fatal(err)
		}
		fc.Close()
	}
	if _, err := cb.Set(root+"/changed", []byte("after the flip, on B"), -1); err != nil {
		t.Fatal(err)
	}
	if _, err := cb.Create(root+"/sibling", nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}

	// Back on its stale flag, or on the recorded primary, with the
	// recorded backlog; or reaching B again.
	switch mode {
	case "cut off":
		cutOff.Store(false)
	case "recorded primary":
		cfg.Epoch, cfg.PrimaryName, cfg.Upstream, cfg.Secondary = 1, ensemble.Target, b.Addrs(), ens.Addrs()
		fallthrough
	default:
		if p2, err = proxytest.Start(cfg); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p2.Close)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		e, primary := p2.Epoch()
		_, _, errAcked := cb.Get(root + "/acked")
		_, _, errAcked2 := cb.Get(root + "/quiet/acked2")
		ad, _, _ := ca.Get(root + "/changed")
		if e == 1 && primary == ensemble.Target && errAcked == nil && errAcked2 == nil && string(ad) == "after the flip, on B" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 30s: proxy at epoch %d primary %s; on B: acked %v, quiet/acked2 %v; A's changed %q (want B's)", e, primary, errAcked, errAcked2, ad)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for n, want := range map[string]string{"/acked": "acked", "/quiet/acked2": "acked2", "/kept": "v2", "/changed": "after the flip, on B"} {
		d, _, err := cb.Get(root + n)
		if err != nil || string(d) != want {
			t.Errorf("%s on B (the new primary): %q, %v; want %q", n, d, err, want)
		}
	}
	if ok, _, err := cb.Exists(root + "/gone"); err != nil || ok {
		t.Errorf("/gone on B: exists %v, %v; want it deleted (deleted on A before the flip)", ok, err)
	}
	if v := metricValue(t, p2.Registry, "zkmigrate_proxy_mirror_failures_total", "reason", "flip_conflict"); v != 1 {
		t.Errorf("mirror_failures_total{reason=flip_conflict} = %v, want 1 (/changed)", v)
	}
	if v := metricValue(t, p2.Registry, "zkmigrate_proxy_mirror_failures_total", "reason", "flip_ambiguous"); v != 0 {
		t.Errorf("mirror_failures_total{reason=flip_ambiguous} = %v, want 0", v)
	}
	waitMirrored(t, p2)
	if err := cb.Delete(root+"/sibling", -1); err != nil { // written on B directly, bypassing the proxies
		t.Fatal(err)
	}
	assertSameTree(t, ens.Addrs(), b.Addrs(), root)
}
