package proxy_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/fence"
	"github.com/zk-migrate/zk-migrate/proxy"
	"github.com/zk-migrate/zk-migrate/proxy/proxytest"
)

// TestSwapWithRaisedFencesKeepsTheClientsView: in the control plane's
// barrier the fences record the epoch before the proxies swap, so a swap
// reads the fences, a sync and the stat of every path shown to a client
// in one pipelined round trip per ensemble (flip_read.go), not raising
// anything, and works through its standby connection to B (flip_conns.go)
// and a session attach whose zxid probe rides with the ConnectRequest
// (leg.go). The client's view must come through that path as through the
// one-shot flip: a conditional write with a version read before the swap
// succeeds exactly when it would have on A, zxids keep increasing, a data
// watch set on A fires once for a change made on B, and the mirror reads
// B after the swap (a write through the proxy is on A too).
func TestSwapWithRaisedFencesKeepsTheClientsView(t *testing.T) {
	root := testRoot(t)
	p, cb := startDualProxy(t, root)
	ca := directConn(t)
	acl := zk.WorldACL(zk.PermAll)
	// /ver at version 5 on A, its copy at 0 on B (same data).
	if _, err := ca.Create(root+"/ver", nil, 0, acl); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		if _, err := ca.Set(root+"/ver", []byte("same"), -1); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cb.Create(root+"/ver", []byte("same"), 0, acl); err != nil {
		t.Fatal(err)
	}
	c, ev := connect(t, []string{p.Addr}, 6*time.Second)
	if _, err := c.Create(root+"/data", []byte("v0"), 0, acl); err != nil {
		t.Fatal(err)
	}
	_, before, err := c.Get(root + "/ver")
	if err != nil || before.Version != 5 {
		t.Fatalf("version through the proxy before the swap: %d %v", before.Version, err)
	}
	_, _, wch, err := c.GetW(root + "/data")
	if err != nil {
		t.Fatal(err)
	}
	waitMirrored(t, p)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const epoch = 1
	for try := 0; ; try++ {
		if _, err := p.Hold(ctx, epoch, ensemble.Target); err == nil {
			break
		} else if try == 5 {
			t.Fatal(err)
		}
	}
	// The control plane raises both fences, A first, while the proxy holds.
	for _, z := range []*zk.Conn{ca, cb} {
		raiseFence(t, z, testFence(t), epoch, ensemble.Target)
	}
	if err := p.Swap(ctx, epoch, ensemble.Target); err != nil {
		t.Fatal(err)
	}
	p.Release(epoch)
	if e, pr := p.Epoch(); e != epoch || pr != ensemble.Target {
		t.Fatalf("after the swap: epoch %d primary %s", e, pr)
	}

	if _, err := c.Set(root+"/ver", []byte("x"), 4); !errors.Is(err, zk.ErrBadVersion) {
		t.Fatalf("write with a version A never had after the swap: %v, want BADVERSION", err)
	}
	st, err := c.Set(root+"/ver", []byte("x"), 5)
	if err != nil || st.Version != 6 {
		t.Fatalf("write with the version read before the swap: version %d %v, want 6", st.Version, err)
	}
	if st.Mzxid <= before.Mzxid {
		t.Fatalf("zxid went backwards across the swap: mzxid 0x%x after 0x%x", st.Mzxid, before.Mzxid)
	}
	if d, bst, err := cb.Get(root + "/ver"); err != nil || string(d) != "x" || bst.Version != 1 {
		t.Fatalf("B after the write: %q version %d %v, want \"x\" at 1", d, bst.Version, err)
	}
	// A change on B fires the watch set on A, once.
	if _, err := cb.Set(root+"/data", []byte("v1"), -1); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-wch:
		if e.Type != zk.EventNodeDataChanged {
			t.Fatalf("watch event %v", e)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the watch set on A did not fire for a change on B")
	}
	// The mirror now reads B and writes A.
	if _, err := c.Set(root+"/data", []byte("v2"), -1); err != nil {
		t.Fatal(err)
	}
	waitMirrored(t, p)
	if d, _, err := ca.Get(root + "/data"); err != nil || string(d) != "v2" {
		t.Fatalf("A after a write through the swapped proxy: %q %v", d, err)
	}
	for {
		select {
		case e := <-ev:
			if e.State == zk.StateDisconnected || e.State == zk.StateExpired {
				t.Fatalf("the client saw %v", e.State)
			}
			continue
		default:
		}
		break
	}
}

// raiseFence does what the control plane's fence.Raise does, through a
// go-zookeeper connection: the fence at path records epoch and primary.
func raiseFence(t *testing.T, c *zk.Conn, path string, epoch int64, primary ensemble.Name) {
	t.Helper()
	body, _ := json.Marshal(fence.Record{Epoch: epoch, Primary: primary})
	for {
		if _, err := c.Sync(path); err != nil && !errors.Is(err, zk.ErrNoNode) {
			t.Fatal(err)
		}
		_, st, err := c.Get(path)
		if errors.Is(err, zk.ErrNoNode) {
			if _, err := c.Create(path, body, 0, zk.WorldACL(zk.PermAll)); err == nil {
				return
			} else if !errors.Is(err, zk.ErrNodeExists) {
				t.Fatal(err)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Set(path, body, st.Version); err == nil {
			return
		} else if !errors.Is(err, zk.ErrBadVersion) {
			t.Fatal(err)
		}
	}
}

// TestFlipOpensNoSessionInThePause: opening a session is a transaction on
// ZooKeeper, and 100 proxies each opening one on the new primary in the
// pause cost tens of milliseconds of it (SPEC.md 6). The swap reads the
// new primary through the standby connection the proxy opened with its
// first client session, and the old one through the mirror's reader, and
// at the swap they trade places, ready for the flip back; and the client's
// session moves onto its shadow session's open connection, handed over by
// the shadow (session_shadow.go). So a flip dials nothing to the new
// primary. Before, the swap dialed its own connection, and the session's
// move another (two dials to B, two to A on the way back).
func TestFlipOpensNoSessionInThePause(t *testing.T) {
	root := testRoot(t)
	b := secondary(t)
	cb, _ := connect(t, b.Addrs(), 10*time.Second)
	if _, err := cb.Create(root, nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	var counting atomic.Bool
	var toA, toB atomic.Int32
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		if counting.Load() {
			if slices.Contains(b.Addrs(), addr) {
				toB.Add(1)
			} else {
				toA.Add(1)
			}
		}
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	p, err := proxytest.Start(proxy.Config{FencePath: testFence(t), Upstream: ens.Addrs(), Secondary: b.Addrs(), Dial: dial, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	c, _ := connect(t, []string{p.Addr}, 6*time.Second)
	if _, err := c.Create(root+"/x", []byte("0"), 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	waitMirrored(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i, to := range []ensemble.Name{ensemble.Target, ensemble.Source} {
		counting.Store(true)
		err := p.Flip(ctx, int64(i+1), to)
		counting.Store(false)
		if err != nil {
			t.Fatal(err)
		}
		dials := toB.Swap(0)
		if to == ensemble.Source {
			dials = toA.Swap(0)
		}
		toA.Store(0)
		toB.Store(0)
		if dials != 0 {
			t.Fatalf("flip to %s dialed the new primary %d times, want none", to.Flag(), dials)
		}
		if _, err := c.Set(root+"/x", []byte(fmt.Sprint(i)), -1); err != nil {
			t.Fatal(err)
		}
		waitMirrored(t, p)
	}
}
