package replicator

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/zkclient"
	"github.com/zk-migrate/zk-migrate/zktest"
)

// dialSideAs dials like dialSide with the given credentials (none: the
// world).
func dialSideAs(auth ...zkclient.Auth) func(context.Context, Side, *zkclient.Conn) (*zkclient.Conn, error) {
	return func(ctx context.Context, side Side, resume *zkclient.Conn) (*zkclient.Conn, error) {
		opts := zkclient.Options{Auth: auth}
		if resume != nil {
			opts.SessionID, opts.Passwd = resume.SessionID(), resume.Passwd()
		}
		return zkclient.Dial(ctx, []*zktest.Ensemble{ensA, ensB}[side].Addrs(), opts)
	}
}

// eventually polls f for up to 20 s.
func eventually(t *testing.T, what string, f func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ok, state := f()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 20s: %s", what, state)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitReconciled waits for the first full reconcile to find root equal: a
// change made after it reaches the other side through the watches alone
// (the periodic reconcile is an hour away in these tests).
func waitReconciled(t *testing.T, c *Continuous, root string) {
	t.Helper()
	eventually(t, "first reconcile", func() (bool, string) {
		eq, done := c.DigestsEqual()[root]
		return eq && done, "digests not equal yet"
	})
}

// TestContinuousCopiesACLBeforeData: the owner restricts a znode's ACL and
// then changes its data. setACL fires no watch, but the data change does:
// B must get the new ACL with the data (not at the next periodic
// reconcile, which is an hour away here), so the znode is never writable
// by anyone on B while it is restricted on A.
func TestContinuousCopiesACLBeforeData(t *testing.T) {
	ctx := context.Background()
	root := testRoot(t)
	build(t, dial(t, ensA), []zkclient.MultiOp{create(root, nil, nil, 0), create(root+"/acl2", []byte("v1"), nil, 0)})
	c, err := NewContinuous(ContinuousConfig{Dial: dialSideAs(append(replAuth, opAuth)...), Roots: []string{root},
		InitialSync: true, Heartbeat: -1, ReconcileEvery: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	runContinuous(t, c)
	owner := endpointsAs(t, replAuth[0], opAuth)
	waitReconciled(t, c, root)

	opA := dialAs(t, ensA, opAuth)
	if err := opA.SetACL(ctx, root+"/acl2", opACL, -1); err != nil {
		t.Fatal(err)
	}
	if _, err := opA.Set(ctx, root+"/acl2", []byte("v2"), -1); err != nil {
		t.Fatal(err)
	}
	b := owner.Target[0]
	eventually(t, "new data and ACL on B", func() (bool, string) {
		data, _, err1 := b.Get(ctx, root+"/acl2")
		acl, _, err2 := b.GetACL(ctx, root+"/acl2")
		return err1 == nil && err2 == nil && string(data) == "v2" && aclKey(acl) == aclKey(opACL),
			"data " + string(data) + ", ACL " + formatACL(acl)
	})
	if _, err := dialAs(t, ensB).Set(ctx, root+"/acl2", []byte("anyone"), -1); jute.CodeOf(err) != jute.CodeNoAuth {
		t.Fatalf("anyone can still write the restricted znode on B: %v", err)
	}
	mustValidate(t, owner, root)

	// Only the ACL changes, then data again: the ACL travels with the data
	// change, and the data is copied once, under it.
	open := append(append([]jute.ACL(nil), opACL...), jute.ACL{Perms: jute.PermRead | jute.PermWrite, ID: jute.Id{Scheme: "world", ID: "anyone"}})
	if err := opA.SetACL(ctx, root+"/acl2", open, -1); err != nil {
		t.Fatal(err)
	}
	if _, err := opA.Set(ctx, root+"/acl2", []byte("v3"), -1); err != nil {
		t.Fatal(err)
	}
	eventually(t, "second ACL on B", func() (bool, string) {
		data, _, _ := b.Get(ctx, root+"/acl2")
		acl, _, _ := b.GetACL(ctx, root+"/acl2")
		return string(data) == "v3" && aclKey(acl) == aclKey(open), "data " + string(data) + ", ACL " + formatACL(acl)
	})
}

// TestContinuousBlocksDataUnderHiddenACL: the same change seen by a
// replicator without the owner's credentials. ZooKeeper hides the new ACL
// from it (op:x), so it can be neither copied nor left behind: the znode is
// blocked, with an alert, and its new data is NOT copied to B (it would be
// writable there by anyone, under the old ACL).
func TestContinuousBlocksDataUnderHiddenACL(t *testing.T) {
	ctx := context.Background()
	root := testRoot(t)
	build(t, dial(t, ensA), []zkclient.MultiOp{create(root, nil, nil, 0), create(root+"/acl2", []byte("v1"), nil, 0),
		create(root+"/other", []byte("o1"), nil, 0)})
	var mu sync.Mutex
	var alerts []string
	c, err := NewContinuous(ContinuousConfig{Dial: dialSideAs(), Roots: []string{root},
		InitialSync: true, Heartbeat: -1, ReconcileEvery: time.Hour, OnAlert: func(a Alert) {
			mu.Lock()
			defer mu.Unlock()
			if a.Kind == "acl_unreadable" {
				alerts = append(alerts, a.Message)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	runContinuous(t, c)
	ep := endpoints(t, 1)
	waitReconciled(t, c, root)

	a, opA := dial(t, ensA), dialAs(t, ensA, opAuth)
	if err := opA.SetACL(ctx, root+"/acl2", opACL, -1); err != nil {
		t.Fatal(err)
	}
	if _, err := opA.Set(ctx, root+"/acl2", []byte("v2"), -1); err != nil {
		t.Fatal(err)
	}
	// A later change on A: once it reached B, the round that saw /acl2's
	// data change is over.
	if _, err := a.Set(ctx, root+"/other", []byte("o2"), -1); err != nil {
		t.Fatal(err)
	}
	b := ep.Target[0]
	eventually(t, "a later change copied", func() (bool, string) {
		data, _, _ := b.Get(ctx, root+"/other")
		return string(data) == "o2", string(data)
	})
	data, _, err := b.Get(ctx, root+"/acl2")
	if err != nil || string(data) != "v1" {
		t.Fatalf("data of a znode whose new ACL is hidden copied to B: %q (%v), want v1", data, err)
	}
	if got := unreadablePaths(c.Unreadable()); got != "A "+root+"/acl2" {
		t.Fatalf("Unreadable() = %q, want A %s/acl2", got, root)
	}
	if eq := c.DigestsEqual()[root]; eq {
		t.Fatal("digests still reported equal with a hidden ACL blocking a znode")
	}
	mu.Lock()
	msg := strings.Join(alerts, "\n")
	mu.Unlock()
	for _, s := range []string{"A " + root + "/acl2: world:anyone:r, digest:op:x:cdrwa", "--auth digest:op:<password>"} {
		if !strings.Contains(msg, s) {
			t.Errorf("acl_unreadable alert lacks %q:\n%s", s, msg)
		}
	}

}

// TestContinuousLeavesZnodesItMayNotReadAlone: znodes whose ACL gives the
// replicator no READ permission (NOAUTH), on A and on B at start, and one
// made so after it was copied, are left alone on both sides with an
// acl_unreadable alert; the rest is copied and the sync is never
// interrupted (no sync_failure), nor is the copied znode deleted from B.
func TestContinuousLeavesZnodesItMayNotReadAlone(t *testing.T) {
	ctx := context.Background()
	root := testRoot(t)
	opOnly := []jute.ACL{opACL[1]}
	build(t, dial(t, ensA), []zkclient.MultiOp{create(root, nil, nil, 0), create(root+"/open", []byte("o"), nil, 0),
		create(root+"/later", []byte("l"), nil, 0)})
	opA, opB := dialAs(t, ensA, opAuth), dialAs(t, ensB, opAuth)
	build(t, opA, []zkclient.MultiOp{create(root+"/secret", []byte("s"), opOnly, 0)})
	build(t, opB, []zkclient.MultiOp{create(root, nil, nil, 0), create(root+"/bsecret", []byte("b"), opOnly, 0)})
	var mu sync.Mutex
	var alerts []string
	c, err := NewContinuous(ContinuousConfig{Dial: dialSide, Roots: []string{root}, InitialSync: true, Heartbeat: -1,
		ReconcileEvery: 200 * time.Millisecond, OnAlert: func(a Alert) {
			mu.Lock()
			defer mu.Unlock()
			alerts = append(alerts, a.Kind+": "+a.Message)
		}})
	if err != nil {
		t.Fatal(err)
	}
	runContinuous(t, c)
	a, b := dial(t, ensA), dial(t, ensB)
	state := func() string {
		mu.Lock()
		defer mu.Unlock()
		return "unreadable " + unreadablePaths(c.Unreadable()) + "; alerts:\n" + strings.Join(alerts, "\n")
	}
	eventually(t, "the readable znodes copied", func() (bool, string) {
		_, err1 := b.Exists(ctx, root+"/open")
		_, err2 := b.Exists(ctx, root+"/later")
		return err1 == nil && err2 == nil, state()
	})
	eventually(t, "both unreadable znodes listed", func() (bool, string) {
		s := state()
		return strings.Contains(s, "A "+root+"/secret: no READ permission") && strings.Contains(s, "B "+root+"/bsecret: no READ permission"), s
	})
	if err := opA.SetACL(ctx, root+"/later", opOnly, -1); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a copied znode made unreadable on A listed", func() (bool, string) {
		return strings.Contains(state(), "A "+root+"/later: no READ permission"), state()
	})
	time.Sleep(500 * time.Millisecond) // more reconciles
	if _, err := b.Exists(ctx, root+"/later"); err != nil {
		t.Fatalf("%s/later deleted from B when it became unreadable on A: %v", root, err)
	}
	if _, err := b.Exists(ctx, root+"/secret"); jute.CodeOf(err) != jute.CodeNoNode {
		t.Fatalf("unreadable %s/secret on B (%v)", root, err)
	}
	if _, err := a.Exists(ctx, root+"/bsecret"); jute.CodeOf(err) != jute.CodeNoNode {
		t.Fatalf("unreadable %s/bsecret on A (%v)", root, err)
	}
	if s := state(); strings.Contains(s, "sync_failure") || c.DigestsEqual()[root] {
		t.Fatalf("sync interrupted, or digests called equal: equal=%v %s", c.DigestsEqual()[root], s)
	}
}
