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

// TestProxyOnTheWrongSideOfItsEpochMoves: a proxy that starts at the
// epoch of a flip with the old primary (the control nodes advertised that
// pair while the flip was under way, and a chaos demo run restarted a
// proxy then) finds both fences recording that epoch with B as primary.
// It must not take the raised fence for its own: it moves to B, and a
// client's write through it lands on B, never on A alone. Before, it
// learned the raised fence's version, passed the check on A and served A
// beside its peers on B.
func TestProxyOnTheWrongSideOfItsEpochMoves(t *testing.T) {
	root := testRoot(t)
	b := secondary(t)
	cb, _ := connect(t, b.Addrs(), 10*time.Second)
	acl := zk.WorldACL(zk.PermAll)
	if _, err := cb.Create(root, nil, 0, acl); err != nil { // on A: testRoot
		t.Fatal(err)
	}
	fencePath := testFence(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, addrs := range [][]string{ens.Addrs(), b.Addrs()} {
		c, err := zkclient.Dial(ctx, addrs, zkclient.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := fence.Raise(ctx, c, fencePath, 1, ensemble.Target); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	p, err := proxytest.Start(proxy.Config{FencePath: fencePath, Upstream: ens.Addrs(), Secondary: b.Addrs(),
		PrimaryName: ensemble.Source, Epoch: 1, Name: "late", Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	c, _ := connect(t, []string{p.Addr}, 10*time.Second)
	n := root + "/written"
	var werr error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		// A write refused while the proxy moves (ConnectionLoss) is retried,
		// as a client does.
		if _, werr = c.Create(n, []byte("x"), 0, acl); werr == nil || werr == zk.ErrNodeExists {
			break
		}
	}
	if werr != nil && werr != zk.ErrNodeExists {
		t.Fatalf("the write through the proxy never succeeded: %v", werr)
	}
	if epoch, primary := p.Epoch(); primary != ensemble.Target {
		t.Fatalf("the proxy serves %s at epoch %d; the fences record B as epoch 1's primary", primary.Flag(), epoch)
	}
	if ok, _, err := cb.Exists(n); err != nil || !ok {
		t.Fatalf("the write is not on B, the primary both fences record (%v)", err)
	}
}
