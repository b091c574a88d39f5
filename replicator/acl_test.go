package replicator

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/zkclient"
	"github.com/zk-migrate/zk-migrate/zktest"
)

// Mesos' EVERYONE_READ_CREATOR_ALL for a master authenticated as op:pw: the
// replicator (repl:pw) may read the data but has no ADMIN, so ZooKeeper
// hides the hash in getACL ("op:x").
var (
	opAuth    = zkclient.Auth{Scheme: "digest", Secret: []byte("op:pw")}
	superAuth = zkclient.Auth{Scheme: "digest", Secret: []byte("super:pw")}
	opACL     = []jute.ACL{
		{Perms: jute.PermRead, ID: jute.Id{Scheme: "world", ID: "anyone"}},
		{Perms: jute.PermAll, ID: jute.Id{Scheme: "digest", ID: digestID("op", "pw")}},
	}
)

func dialAs(t testing.TB, ens *zktest.Ensemble, auth ...zkclient.Auth) *zkclient.Conn {
	t.Helper()
	c, err := zkclient.Dial(context.Background(), ens.Addrs(), zkclient.Options{Auth: auth})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func endpointsAs(t testing.TB, auth ...zkclient.Auth) Endpoints {
	return Endpoints{Source: []*zkclient.Conn{dialAs(t, ensA, auth...)}, Target: []*zkclient.Conn{dialAs(t, ensB, auth...)}}
}

func unreadablePaths(nodes []UnreadableACL) string {
	var out []string
	for _, n := range nodes {
		out = append(out, n.Side.String()+" "+n.Path)
	}
	return strings.Join(out, ", ")
}

// TestSyncRefusesHiddenACLs: the reader has ADMIN on some znodes and not on
// others. Sync must refuse before writing anything, listing every znode
// whose ACL ZooKeeper hid (over all roots), with the reason and the fix.
// With the owner's identity the copy is exact; a reader without it can then
// no longer call the copy equal.
func TestSyncRefusesHiddenACLs(t *testing.T) {
	ctx := context.Background()
	root, root2 := testRoot(t), testRoot(t)
	repl := dial(t, ensA)
	build(t, repl, []zkclient.MultiOp{create(root, nil, nil, 0), create(root+"/open", []byte("o"), nil, 0),
		create(root+"/mine", []byte("m"), restrictedACL, 0), create(root2, nil, nil, 0)})
	op := dialAs(t, ensA, opAuth)
	build(t, op, []zkclient.MultiOp{create(root+"/locked", []byte("l"), opACL, 0), create(root+"/locked/child", []byte("c"), opACL, 0),
		create(root+"/open/deep", []byte("d"), opACL, 0), create(root2+"/locked", []byte("l2"), opACL, 0)})

	ep := endpoints(t, 2) // repl:pw only
	_, err := Sync(ctx, ep, []string{root, root2}, Options{})
	var hidden *UnreadableACLError
	if !errors.As(err, &hidden) {
		t.Fatalf("sync with ACLs it cannot read: %v, want an UnreadableACLError", err)
	}
	want := fmt.Sprintf("A %s/locked, A %s/locked/child, A %s/open/deep, A %s/locked", root, root, root, root2)
	if got := unreadablePaths(hidden.Nodes); got != want {
		t.Fatalf("listed %s\nwant     %s", got, want)
	}
	for _, s := range []string{"ADMIN permission", "-Dzookeeper.DigestAuthenticationProvider.superDigest", "--auth digest:op:<password>",
		"digest:super:<password>", root + "/locked/child: world:anyone:r, digest:op:x:cdrwa"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error lacks %q:\n%v", s, err)
		}
	}
	for _, r := range []string{root, root2} {
		if _, err := ep.Target[0].Exists(ctx, r); jute.CodeOf(err) != jute.CodeNoNode {
			t.Fatalf("%s written on B by a refused sync: %v", r, err)
		}
	}

	// With the owner's identity: an exact copy.
	owner := endpointsAs(t, replAuth[0], opAuth)
	if _, err := Sync(ctx, owner, []string{root, root2}, Options{}); err != nil {
		t.Fatal(err)
	}
	mustValidate(t, owner, root)
	mustValidate(t, owner, root2)
	for _, p := range []string{root + "/locked", root + "/locked/child", root + "/open/deep"} {
		acl, _, err := owner.Target[0].GetACL(ctx, p)
		if err != nil || aclKey(acl) != aclKey(opACL) {
			t.Fatalf("ACL of %s on B = %v (%v), want %v", p, acl, err, opACL)
		}
	}
	if err := dialAs(t, ensB, opAuth).Delete(ctx, root+"/locked/child", -1); err != nil {
		t.Fatalf("the owner is locked out of its copied znode on B: %v", err)
	}
	if _, err := owner.Target[0].Create(ctx, root+"/locked/child", []byte("c"), opACL, 0); err != nil {
		t.Fatal(err)
	}

	// A reader without ADMIN sees op:x on both sides: not equal, not
	// different, unverifiable.
	vs, err := Validate(ctx, ep, []string{root}, 10)
	if err != nil {
		t.Fatal(err)
	}
	v := vs[0]
	if v.Equal || v.Different() || len(v.Unverifiable) != 6 {
		t.Fatalf("validate without ADMIN: equal=%v differences=%v unverifiable=%s", v.Equal, v.Differences, unreadablePaths(v.Unverifiable))
	}
}

// TestHiddenACLsOnTheTarget: A's ACLs are readable (the super digest, only
// on A) but B's are not. Validate cannot prove the copy; a second Sync
// refuses, naming B's znodes, and writes nothing.
func TestHiddenACLsOnTheTarget(t *testing.T) {
	ctx := context.Background()
	root := testRoot(t)
	build(t, dial(t, ensA), []zkclient.MultiOp{create(root, nil, nil, 0), create(root+"/open", []byte("1"), nil, 0)})
	build(t, dialAs(t, ensA, opAuth), []zkclient.MultiOp{create(root+"/locked", []byte("l"), opACL, 0)})
	ep := endpointsAs(t, superAuth)
	if _, err := Sync(ctx, ep, []string{root}, Options{}); err != nil {
		t.Fatal(err) // B is empty: every ACL read is A's, and readable
	}
	vs, err := Validate(ctx, ep, []string{root}, 10)
	if err != nil {
		t.Fatal(err)
	}
	if v := vs[0]; v.Equal || v.Different() || unreadablePaths(v.Unverifiable) != "B "+root+"/locked" {
		t.Fatalf("validate with B's ACL hidden: equal=%v differences=%v unverifiable=%s", v.Equal, v.Differences, unreadablePaths(v.Unverifiable))
	}
	if _, err := ep.Source[0].Set(ctx, root+"/open", []byte("2"), -1); err != nil {
		t.Fatal(err)
	}
	_, err = Sync(ctx, ep, []string{root}, Options{})
	var hidden *UnreadableACLError
	if !errors.As(err, &hidden) || unreadablePaths(hidden.Nodes) != "B "+root+"/locked" || !strings.Contains(err.Error(), "literal user:x") {
		t.Fatalf("sync with B's ACL hidden: %v", err)
	}
	if got, _, _ := ep.Target[0].Get(ctx, root+"/open"); string(got) != "1" {
		t.Fatalf("a refused sync wrote %q on B", got)
	}
}

// TestContinuousStopsCopyingHiddenACLs: znodes whose ACL is hidden, present
// at start or created later on either side, raise an alert and are never
// copied, while everything else is; the root never counts as equal until
// the replicator can read them.
func TestContinuousStopsCopyingHiddenACLs(t *testing.T) {
	ctx := context.Background()
	root := testRoot(t)
	build(t, dial(t, ensA), []zkclient.MultiOp{create(root, nil, nil, 0), create(root+"/plain", []byte("p"), nil, 0)})
	opA, opB := dialAs(t, ensA, opAuth), dialAs(t, ensB, opAuth)
	build(t, opA, []zkclient.MultiOp{create(root+"/pre", []byte("x"), opACL, 0), create(root+"/pre/kid", []byte("k"), opACL, 0)})
	var mu sync.Mutex
	var alerts []string
	c, err := NewContinuous(ContinuousConfig{Dial: dialSide, Roots: []string{root}, InitialSync: true, Heartbeat: -1,
		ReconcileEvery: 300 * time.Millisecond, OnAlert: func(a Alert) {
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
	b := dial(t, ensB)
	waitUntil := func(what string, f func() bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for !f() {
			if time.Now().After(deadline) {
				mu.Lock()
				defer mu.Unlock()
				t.Fatalf("%s: not within 20s (unreadable %s; alerts %q)", what, unreadablePaths(c.Unreadable()), alerts)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	alerted := func(p string) bool {
		mu.Lock()
		defer mu.Unlock()
		return strings.Contains(strings.Join(alerts, "\n"), p+": world:anyone:r, digest:op:x:cdrwa")
	}
	exists := func(c *zkclient.Conn, p string) bool { _, err := c.Exists(ctx, p); return err == nil }
	waitUntil("initial copy of the rest", func() bool { return exists(b, root+"/plain") })
	waitUntil("alert for a hidden ACL at start", func() bool { return alerted("A " + root + "/pre") })

	// Created later, on A and on B.
	if _, err := opA.Create(ctx, root+"/new", []byte("n"), opACL, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := opB.Create(ctx, root+"/fromb", []byte("f"), opACL, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := dial(t, ensA).Create(ctx, root+"/after", nil, zkclient.OpenACL, 0); err != nil {
		t.Fatal(err)
	}
	waitUntil("alerts for hidden ACLs created later", func() bool { return alerted("A "+root+"/new") && alerted("B "+root+"/fromb") })
	waitUntil("the rest still copied", func() bool { return exists(b, root+"/after") })
	time.Sleep(700 * time.Millisecond) // two more reconciles
	for _, p := range []string{root + "/pre", root + "/pre/kid", root + "/new"} {
		if exists(b, p) {
			t.Fatalf("%s copied to B although its ACL is hidden", p)
		}
	}
	if exists(dial(t, ensA), root+"/fromb") {
		t.Fatal("B's znode with a hidden ACL copied to A")
	}
	if c.DigestsEqual()[root] {
		t.Fatal("digests reported equal with hidden ACLs")
	}

	// The fix: the owner grants the replicator ADMIN on /pre; the others go.
	grant := append(append([]jute.ACL(nil), opACL...), jute.ACL{Perms: jute.PermAll, ID: jute.Id{Scheme: "digest", ID: digestID("repl", "pw")}})
	for _, p := range []string{root + "/pre", root + "/pre/kid"} {
		if err := opA.SetACL(ctx, p, grant, -1); err != nil {
			t.Fatal(err)
		}
	}
	if err := opA.Delete(ctx, root+"/new", -1); err != nil {
		t.Fatal(err)
	}
	if err := opB.Delete(ctx, root+"/fromb", -1); err != nil {
		t.Fatal(err)
	}
	waitUntil("equal digests once every ACL is readable", func() bool { return c.DigestsEqual()[root] && len(c.Unreadable()) == 0 })
	acl, _, err := b.GetACL(ctx, root+"/pre/kid")
	if err != nil || aclKey(acl) != aclKey(grant) {
		t.Fatalf("ACL of /pre/kid on B = %v (%v), want %v", acl, err, grant)
	}
}

// TestPlanLeavesBlockedZnodesAlone: with hidden ACLs skipped, nothing is
// planned for such a znode, for the deletion of its ancestors, or for the
// creation of descendants that would need it created; the rest is planned.
func TestPlanLeavesBlockedZnodesAlone(t *testing.T) {
	tree := func(paths ...string) *Tree {
		tr := &Tree{Nodes: map[string]*Node{}}
		for _, p := range paths {
			tr.Nodes[p] = &Node{Path: p, Data: []byte(p), ACL: zkclient.OpenACL}
		}
		return tr
	}
	src := tree("/r", "/r/hid", "/r/hid/kid", "/r/there", "/r/there/kid", "/r/ok")
	src.Nodes["/r/there"].Data = []byte("new")
	dst := tree("/r", "/r/there", "/r/gone", "/r/gone/hid", "/r/gone/other")
	blocked := map[string]bool{"/r/hid": true, "/r/there": true, "/r/gone/hid": true}
	p := plan(src, dst, 0, blocked, false)
	paths := func(ops []zkclient.MultiOp) string {
		var out []string
		for _, op := range ops {
			switch r := op.Req.(type) {
			case *jute.CreateRequest:
				out = append(out, r.Path)
			case *jute.DeleteRequest:
				out = append(out, r.Path)
			case *jute.SetDataRequest:
				out = append(out, r.Path)
			}
		}
		return strings.Join(out, ",")
	}
	if got := paths(p.creates); got != "/r/ok,/r/there/kid" {
		t.Errorf("creates %s", got)
	}
	if got := paths(p.deletes); got != "/r/gone/other" {
		t.Errorf("deletes %s", got)
	}
	if got := paths(p.updates); got != "" {
		t.Errorf("updates %s", got)
	}
	if len(p.acls) != 0 || !p.skipped["/r/hid"] || !p.skipped["/r/hid/kid"] {
		t.Errorf("acls %v, skipped %v", p.acls, p.skipped)
	}
}
