package proxy_test

import (
	"context"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"
)

// TestShadowClosedWhenTheSecondaryReturns: a client that closes its
// session while the secondary is down has its shadow session closed on the
// secondary as soon as the secondary is back, so the client's ephemeral
// goes from it then, not a session timeout later. Before, the proxy gave
// up the close and left the session to expire (30 s here, counted from the
// secondary's restart): in the chaos demo a stopped master's json.info_
// ephemeral stayed on A that long, a replicator copied it to B as a
// bypassing client's, and the masters saw a dead master again (SPEC.md 5c).
func TestShadowClosedWhenTheSecondaryReturns(t *testing.T) {
	root := testRoot(t)
	p, _ := startDualProxy(t, root)
	c, ev, err := zk.Connect([]string{p.Addr}, 30*time.Second, zk.WithLogInfo(false))
	if err != nil {
		t.Fatal(err)
	}
	for c.State() != zk.StateHasSession {
		select {
		case <-ev:
		case <-time.After(15 * time.Second):
			t.Fatalf("no session through the proxy (state %v)", c.State())
		}
	}
	eph := root + "/eph"
	if _, err := c.Create(eph, nil, zk.FlagEphemeral, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	waitMirrored(t, p)
	if err := ensB.Kill(1); err != nil {
		t.Fatal(err)
	}
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			_ = ensB.Restart(context.Background(), 1)
		}
	})
	c.Close() // closeSession: the primary closes it, the secondary is down
	// The shadow finds the secondary unreachable and ends; the session it
	// owned is still there (ZooKeeper restores sessions at start-up).
	time.Sleep(2 * time.Second)
	if err := ensB.Restart(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	restarted = true
	back := time.Now()
	cb, _ := connect(t, ensB.Addrs(), 10*time.Second)
	for {
		ok, _, err := cb.Exists(eph)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			t.Logf("the closed client's ephemeral went from the secondary %v after its return", time.Since(back).Round(time.Millisecond))
			return
		}
		if time.Since(back) > 10*time.Second {
			t.Fatalf("the closed client's ephemeral %s is still on the secondary %v after its return: its shadow session was left to expire (30 s) instead of being closed", eph, time.Since(back).Round(time.Second))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
