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

// TestProxyRestartedInsideTheBarrierHoldsItself: the flip scenario under
// faults (SPEC.md 4.10, "A proxy the barrier did not hold"). The control
// plane announces the barrier on A and holds the first proxy; the second
// proxy, killed before, restarts from its --state-dir on A at the old
// epoch (the control plane records it until the flip is done) and its
// client, back on it, writes a register. Before the announcement, the
// restarted proxy served that write on A while its peer held: in the
// scenario its clients alone wrote, to A, for seconds, and the writes
// reached B after the fence (porcupine: Illegal). Now it must hold the
// write until the barrier raises the fences, then serve it on B once the
// barrier is over: the write succeeds (no ConnectionLoss), is on B, and
// was never on A before the raise; the proxy ends at the flip's epoch
// with primary B.
func TestProxyRestartedInsideTheBarrierHoldsItself(t *testing.T) {
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
	dir := t.TempDir()
	cfg2 := proxy.Config{FencePath: fencePath, Upstream: ens.Addrs(), Secondary: b.Addrs(), Name: "p2",
		StateDir: dir, FenceLease: time.Second, Logger: testLogger(t)}
	p2, err := proxytest.Start(cfg2)
	if err != nil {
		t.Fatal(err)
	}
	addr2 := p2.Addr
	t.Cleanup(func() { p2.Close() })
	c2, _ := connect(t, []string{addr2}, 12*time.Second) // a pause budget of 4 s
	if _, _, err := c2.Get(r); err != nil {
		t.Fatal(err)
	}

	// The second proxy dies (its state directory as a SIGKILL leaves it).
	saved := snapshotDir(t, dir)
	p2.Close()
	restoreDir(t, dir, saved)

	// The control plane: announce the barrier on the old primary, hold
	// the first proxy (the second is down: not held).
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
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
	if _, err := fence.Announce(ctx, fa, fencePath, 1, ensemble.Target); err != nil {
		t.Fatal(err)
	}
	if _, err := p1.Hold(ctx, 1, ensemble.Target); err != nil {
		t.Fatal(err)
	}
	m1, ok := p1.HoldMarker(1)
	if !ok {
		t.Fatal("the held proxy armed no hold marker")
	}

	// The second proxy restarts on A at the old epoch; its client writes.
	if p2, err = proxytest.StartOn(addr2, cfg2); err != nil {
		t.Fatal(err)
	}
	type result struct {
		st  *zk.Stat
		err error
	}
	wrote := make(chan result, 1)
	go func() {
		st, err := c2.Set(r, []byte("p2"), -1)
		wrote <- result{st, err}
	}()
	// Until the restarted proxy holds itself (then some more: its
	// client's write must still wait), or the write is served.
	held := time.Time{}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		select {
		case res := <-wrote:
			t.Fatalf("the restarted proxy served its client's write (%v) while the barrier held its peer: it went to the old primary A", res.err)
		default:
		}
		if _, ok := p2.HoldMarker(1); ok && held.IsZero() {
			held = time.Now()
		}
		if !held.IsZero() && time.Since(held) > 500*time.Millisecond {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the restarted proxy never held itself for the announced barrier")
		}
	}
	if data, _, err := ca.Get(r); err != nil || string(data) != "0" {
		t.Fatalf("A holds %q (%v) before the fence was raised: a write served on the old primary inside the barrier", data, err)
	}

	// The barrier goes on: raise the fences, swap and release the first
	// proxy, withdraw the announcement.
	if _, lapsed, err := fence.RaiseIf(ctx, fa, fencePath, 1, ensemble.Target, []fence.Marker{m1}); err != nil || len(lapsed) > 0 {
		t.Fatalf("raise A's fence: lapsed %v, %v", lapsed, err)
	}
	if _, err := fence.Raise(ctx, fb, fencePath, 1, ensemble.Target); err != nil {
		t.Fatal(err)
	}
	if err := p1.Swap(ctx, 1, ensemble.Target); err != nil {
		t.Fatal(err)
	}
	p1.Release(1)
	if err := fence.Withdraw(ctx, fa, fencePath, 1); err != nil {
		t.Fatal(err)
	}

	select {
	case res := <-wrote:
		if res.err != nil {
			t.Fatalf("the held write failed: %v (its client must see a pause, never an error)", res.err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the restarted proxy's client's write was never served")
	}
	if data, _, err := cb.Get(r); err != nil || string(data) != "p2" {
		t.Fatalf("B holds %q (%v) after the write through the restarted proxy, want \"p2\"", data, err)
	}
	if e, p := p2.Epoch(); e != 1 || p != ensemble.Target {
		t.Fatalf("the restarted proxy holds epoch %d primary %s, want 1 and B", e, p.Flag())
	}
}
