package proxy_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/fence"
	"github.com/zk-migrate/zk-migrate/proxy"
	"github.com/zk-migrate/zk-migrate/proxy/proxytest"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// TestBarrierNeverServesTwoPrimaries runs the two-phase barrier over two
// proxies as the control plane does (hold both, swap, release), except
// that the second proxy's swap never comes: the first serves B while the
// second still holds A's sessions. A write sent through the second proxy
// then waits in its hold. When the hold runs out (its budget: a third of
// the session timeout) the proxy settles through its hold marker
// (fence.Resume): it finds A's fence raised to the epoch, so it swaps
// instead of resuming on A, and the write lands on B: its client sees a
// longer pause and no error (A gets the value later, as B's mirror). So no two proxies
// ever write to different primaries. Without the settlement the write went
// to A, whose fence refused it (ConnectionLoss).
func TestBarrierNeverServesTwoPrimaries(t *testing.T) {
	root := testRoot(t)
	p1, cb := startDualProxy(t, root)
	// A long read lease: the second proxy does not look at the fence again
	// during the test, so its write reaches A, whose fence alone refuses it.
	p2, err := proxytest.Start(proxy.Config{FencePath: testFence(t), Upstream: ens.Addrs(), Secondary: secondary(t).Addrs(),
		FenceLease: 30 * time.Second, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p2.Close)
	// 9 s sessions: a 3 s pause budget, room for the swaps on a loaded
	// machine.
	c1, _ := connect(t, []string{p1.Addr}, 9*time.Second)
	c2, _ := connect(t, []string{p2.Addr}, 9*time.Second)
	if _, err := c1.Create(root+"/x", []byte("0"), 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c2.Get(root + "/x"); err != nil {
		t.Fatal(err)
	}
	waitMirrored(t, p1)
	// Only the control plane raises the fence: a client's write is refused.
	if _, err := c1.Set(testFence(t), []byte(`{"epoch":9,"primary":"B"}`), -1); !errors.Is(err, zk.ErrNoAuth) {
		t.Fatalf("a client's write to the fence znode: %v, want NOAUTH", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const epoch = 1
	var budget time.Duration
	for _, p := range []*proxytest.Proxy{p1, p2} {
		// A drain longer than the budget on a loaded machine is refused:
		// the control plane asks again.
		for try := 0; ; try++ {
			b, err := p.Hold(ctx, epoch, ensemble.Target)
			if err == nil {
				budget = b
				break
			}
			if try == 5 {
				t.Fatal(err)
			}
		}
	}
	if budget <= 0 || budget > 3*time.Second {
		t.Fatalf("hold budget %v, want a third of the 9 s session timeout at most", budget)
	}
	// A write through the second proxy waits in its hold.
	written := make(chan error, 1)
	go func() {
		_, err := c2.Set(root+"/x", []byte("from-p2"), -1)
		written <- err
	}()
	// The first proxy swaps (raising the fences, as the control plane
	// would have) and is released: it serves B.
	if err := p1.Swap(ctx, epoch, ensemble.Target); err != nil {
		t.Fatal(err)
	}
	p1.Release(epoch)
	if _, err := c1.Set(root+"/x", []byte("from-p1"), -1); err != nil {
		t.Fatal(err)
	}
	if d, _, err := cb.Get(root + "/x"); err != nil || string(d) != "from-p1" {
		t.Fatalf("B after the first proxy's swap: %q %v", d, err)
	}
	// The second proxy is never swapped: its hold ends by itself, finds
	// the fence raised and swaps.
	select {
	case err := <-written:
		if err != nil {
			t.Fatalf("write through the proxy whose hold ran out after the fence: %v, want it done on B", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the write through the held proxy never ended")
	}
	if e, pr := p2.Epoch(); e != epoch || pr != ensemble.Target {
		t.Fatalf("after its hold ran out the second proxy serves epoch %d from %s, want %d from B", e, pr, epoch)
	}
	if _, err := cb.Sync(root + "/x"); err != nil {
		t.Fatal(err)
	}
	if d, _, err := cb.Get(root + "/x"); err != nil || string(d) != "from-p2" {
		t.Fatalf("B holds %q (%v), want the held write", d, err)
	}
	if n := metricValue(t, p2.Registry, "zkmigrate_proxy_fenced_total", "what", "write"); n != 0 {
		t.Fatalf("fenced_total{what=write} = %v, want no write refused by the fence", n)
	}
}

// TestHoldRunningOutFirstStopsTheRaise is the other order: a proxy's hold
// runs out before the control plane raises the fence. The proxy bumps its
// hold marker (on the condition that the fence is not raised) and resumes
// its clients on A; the control plane's raise, conditional on the marker
// version the hold answered, then fails and names the marker, so the
// proxy's clients never meet a raised fence with a write in hand. Held
// again, the raise goes through. Without the marker the raise fenced A
// while the proxy served it: its next write failed (ConnectionLoss).
func TestHoldRunningOutFirstStopsTheRaise(t *testing.T) {
	root := testRoot(t)
	p, cb := startDualProxy(t, root)
	c, _ := connect(t, []string{p.Addr}, 3*time.Second) // a 1 s budget
	if _, err := c.Create(root+"/x", []byte("0"), 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	waitMirrored(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const epoch = 1
	hold := func() fence.Marker {
		t.Helper()
		for try := 0; ; try++ {
			_, err := p.Hold(ctx, epoch, ensemble.Target)
			if err == nil {
				break
			}
			if try == 5 {
				t.Fatal(err)
			}
		}
		m, ok := p.HoldMarker(epoch)
		if !ok {
			t.Fatal("a hold answered without a hold marker")
		}
		return m
	}
	m := hold()
	// The hold runs out: the proxy resumes on A.
	for deadline := time.Now().Add(20 * time.Second); ; {
		if _, ok := p.HoldMarker(epoch); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the hold did not end by itself")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := c.Set(root+"/x", []byte("after-the-hold"), -1); err != nil {
		t.Fatalf("write after the hold ran out: %v", err)
	}
	a, err := zkclient.Dial(ctx, ens.Addrs(), zkclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	rec, lapsed, err := fence.RaiseIf(ctx, a, testFence(t), epoch, ensemble.Target, []fence.Marker{m})
	if err != nil {
		t.Fatal(err)
	}
	if len(lapsed) != 1 || rec.Epoch != 0 {
		t.Fatalf("raise after the proxy resumed: lapsed %v, fence at epoch %d; want it refused (the proxy serves A)", lapsed, rec.Epoch)
	}
	if _, err := c.Set(root+"/x", []byte("still-on-a"), -1); err != nil {
		t.Fatalf("write after the refused raise: %v, want it done on A", err)
	}
	// Held again, the raise goes through; the swap and release follow.
	m = hold()
	if _, lapsed, err = fence.RaiseIf(ctx, a, testFence(t), epoch, ensemble.Target, []fence.Marker{m}); err != nil || len(lapsed) != 0 {
		t.Fatalf("raise while the proxy holds: lapsed %v, err %v", lapsed, err)
	}
	if err := p.Swap(ctx, epoch, ensemble.Target); err != nil {
		t.Fatal(err)
	}
	p.Release(epoch)
	if _, err := c.Set(root+"/x", []byte("on-b"), -1); err != nil {
		t.Fatalf("write after the flip: %v", err)
	}
	if d, _, err := cb.Get(root + "/x"); err != nil || string(d) != "on-b" {
		t.Fatalf("B holds %q (%v) after the flip", d, err)
	}
	if n := metricValue(t, p.Registry, "zkmigrate_proxy_fenced_total", "what", "write"); n != 0 {
		t.Fatalf("fenced_total{what=write} = %v, want no write refused by the fence", n)
	}
}

// TestHoldWaitsForTheSwapOnceTheFenceIsRaised: a hold that runs out after
// the control plane raised the fence (the commit came late) holds on for
// up to half a budget more instead of swapping by itself, so that the
// control plane's swap still finds every proxy holding: versions are read
// while no proxy's clients write (a proxy that swapped and resumed alone
// let its clients write while another read the versions: the flip
// scenario's register history was Illegal). The held write then goes to B
// with the swap, and the client sees a pause only.
func TestHoldWaitsForTheSwapOnceTheFenceIsRaised(t *testing.T) {
	root := testRoot(t)
	p, cb := startDualProxy(t, root)
	c, _ := connect(t, []string{p.Addr}, 15*time.Second) // a 5 s budget, 2.5 s more
	if _, err := c.Create(root+"/x", []byte("0"), 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	waitMirrored(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const epoch = 1
	var budget time.Duration
	for try := 0; ; try++ {
		b, err := p.Hold(ctx, epoch, ensemble.Target)
		if err == nil {
			budget = b
			break
		}
		if try == 5 {
			t.Fatal(err)
		}
	}
	held := time.Now()
	m, ok := p.HoldMarker(epoch)
	if !ok {
		t.Fatal("no hold marker")
	}
	a, err := zkclient.Dial(ctx, ens.Addrs(), zkclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if _, lapsed, err := fence.RaiseIf(ctx, a, testFence(t), epoch, ensemble.Target, []fence.Marker{m}); err != nil || len(lapsed) != 0 {
		t.Fatalf("raise: %v %v", lapsed, err)
	}
	nb, err := zkclient.Dial(ctx, secondary(t).Addrs(), zkclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer nb.Close()
	if _, err := fence.Raise(ctx, nb, testFence(t), epoch, ensemble.Target); err != nil {
		t.Fatal(err)
	}
	written := make(chan error, 1)
	go func() {
		_, err := c.Set(root+"/x", []byte("held"), -1)
		written <- err
	}()
	// Past the budget: still holding, the write still waiting.
	time.Sleep(time.Until(held.Add(budget + budget/10)))
	if _, ok := p.HoldMarker(epoch); !ok {
		t.Fatal("the hold ended at its budget with the fence raised: the proxy swapped alone instead of waiting for the swap")
	}
	select {
	case err := <-written:
		t.Fatalf("the held write ended (%v) before the swap", err)
	default:
	}
	if err := p.Swap(ctx, epoch, ensemble.Target); err != nil {
		t.Fatal(err)
	}
	p.Release(epoch)
	if err := <-written; err != nil {
		t.Fatalf("the held write: %v", err)
	}
	if d, _, err := cb.Get(root + "/x"); err != nil || string(d) != "held" {
		t.Fatalf("B holds %q (%v), want the held write", d, err)
	}
}
