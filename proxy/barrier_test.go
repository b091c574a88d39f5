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

// TestBarrierNeverServesTwoPrimaries runs the two-phase barrier over two
// proxies as the control plane does (hold both, swap, release), except
// that the second proxy's swap never comes: the first serves B while the
// second still holds A's sessions. A write sent through the second proxy
// then waits in its hold; when the hold ends by itself (its budget: a
// third of the session timeout) the write goes to A, whose fence refuses
// it: its client sees ConnectionLoss and A never has the value. So no two
// proxies ever write to different primaries. The second proxy then finds
// the new epoch in the fence and moves to B by itself. Without the fence
// the write landed on A while B served the other proxy's clients.
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
	// The second proxy is never swapped: its hold ends by itself.
	select {
	case err := <-written:
		if !errors.Is(err, zk.ErrConnectionClosed) {
			t.Fatalf("write through the proxy left on A: %v, want ConnectionLoss", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the write through the held proxy never ended")
	}
	a := directConn(t)
	if _, err := a.Sync(root + "/x"); err != nil {
		t.Fatal(err)
	}
	if d, _, err := a.Get(root + "/x"); err != nil || string(d) == "from-p2" {
		t.Fatalf("A holds %q (%v): a proxy wrote A while another served B", d, err)
	}
	if n := metricValue(t, p2.Registry, "zkmigrate_proxy_fenced_total", "what", "write"); n < 1 {
		t.Fatalf("fenced_total{what=write} = %v, want the refused write counted", n)
	}
	// The second proxy moves to B by itself (it retries every quarter of
	// its lease until its flip fits the pause budget).
	deadline := time.Now().Add(60 * time.Second)
	for {
		d, _, err := c2.Get(root + "/x")
		if e, pr := p2.Epoch(); err == nil && string(d) == "from-p1" && e == epoch && pr == ensemble.Target {
			break
		}
		if time.Now().After(deadline) {
			e, pr := p2.Epoch()
			t.Fatalf("the fenced proxy did not move to B: read %q %v, epoch %d, primary %s", d, err, e, pr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
