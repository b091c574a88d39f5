package replicator

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/zkclient"
	"github.com/zk-migrate/zk-migrate/zktest"
)

// The tests here run the replicator with Primary A beside writers that
// stand for the two kinds a dual-writing migration has: a mirror-like
// writer on B (the proxies' shadow session: it writes on B what A already
// shows, a little later) and writers that bypass the proxies (on A or B
// directly).

const testMirrorGrace = 2 * time.Second

// mirroredOn starts a replicator with Primary A on root (created on both
// sides, with nodes, before the initial copy) and returns it with a
// function listing the conflicts it reported.
func mirroredOn(t *testing.T, root string, nodes ...string) (*Continuous, func() []Event) {
	t.Helper()
	ctx := context.Background()
	for _, ens := range []*zktest.Ensemble{ensA, ensB} {
		c := dial(t, ens)
		for _, p := range append([]string{root}, nodes...) {
			if _, err := c.Create(ctx, p, []byte("v0"), zkclient.OpenACL, 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	var mu sync.Mutex
	var conflicts []Event
	c, err := NewContinuous(ContinuousConfig{Dial: dialSide, Roots: []string{root}, InitialSync: true, Heartbeat: -1,
		ReconcileEvery: 300 * time.Millisecond, Primary: ensemble.Source, MirrorGrace: testMirrorGrace,
		OnEvent: func(e Event) {
			if e.Kind == "conflict" {
				mu.Lock()
				conflicts = append(conflicts, e)
				mu.Unlock()
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	runContinuous(t, c)
	deadline := time.Now().Add(10 * time.Second)
	for !c.DigestsEqual()[root] {
		if time.Now().After(deadline) {
			t.Fatal("no full reconcile within 10 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return c, func() []Event {
		mu.Lock()
		defer mu.Unlock()
		return append([]Event(nil), conflicts...)
	}
}

// within polls f until it returns "" or limit passes (then fails
// with f's last word).
func within(t *testing.T, limit time.Duration, f func() string) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		msg := f()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(msg)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestMirroredEphemeralStaysTheShadowSessions: a client's ephemeral on A
// is created on B by its shadow session a little later, and later deleted
// and re-created there (as the mirror does to replace a copy of the wrong
// owner). The replicator neither creates its own copy on B (the owner on
// B is the shadow session) nor deletes the client's node on A while B's
// copy is briefly missing, and reports no conflict. A deletion on A still
// reaches B at once.
func TestMirroredEphemeralStaysTheShadowSessions(t *testing.T) {
	root := testRoot(t)
	c, conflicts := mirroredOn(t, root)
	shadowOwnsEphemeral(t, c, root, ensA, ensB)
	if k := conflicts(); len(k) > 0 {
		t.Fatalf("conflicts reported for the mirror's writes: %+v", k)
	}
}

// TestMirroredFollowsTheFlip: after SetPrimary(Target) (the control plane
// follows the flip) the same holds the other way: B is the primary, A the
// secondary whose shadow session owns the client's ephemeral. An unknown
// primary is refused.
func TestMirroredFollowsTheFlip(t *testing.T) {
	root := testRoot(t)
	c, conflicts := mirroredOn(t, root)
	if err := c.SetPrimary("C"); err == nil {
		t.Fatal("SetPrimary accepted an unknown ensemble")
	}
	if err := c.SetPrimary(ensemble.Target); err != nil {
		t.Fatal(err)
	}
	shadowOwnsEphemeral(t, c, root, ensB, ensA)
	if k := conflicts(); len(k) > 0 {
		t.Fatalf("conflicts reported for the mirror's writes: %+v", k)
	}
}

// shadowOwnsEphemeral runs the scenario of
// TestMirroredEphemeralStaysTheShadowSessions with primary pe and
// secondary se.
func shadowOwnsEphemeral(t *testing.T, c *Continuous, root string, pe, se *zktest.Ensemble) {
	t.Helper()
	ctx := context.Background()
	a, b := dial(t, pe), dial(t, se) // a: the primary, b: the secondary
	client := mustDial(t, pe)
	shadow := mustDial(t, se)
	node := root + "/json.info_0000000001"
	if _, err := client.Create(ctx, node, []byte("master"), zkclient.OpenACL, jute.FlagEphemeral); err != nil {
		t.Fatal(err)
	}
	// The mirror: after the primary's acknowledgement, the shadow session
	// makes the secondary's node its own (replacing any other session's).
	mirror := func() {
		t.Helper()
		_, st, err := shadow.Get(ctx, node)
		if err == nil && st.EphemeralOwner != shadow.SessionID() {
			if err := shadow.Delete(ctx, node, st.Version); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := shadow.Create(ctx, node, []byte("master"), zkclient.OpenACL, jute.FlagEphemeral); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond)
	mirror()
	time.Sleep(400 * time.Millisecond)
	// A re-create on the secondary: briefly missing there.
	if err := shadow.Delete(ctx, node, -1); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	mirror()
	for end := time.Now().Add(2 * testMirrorGrace); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		stA, err := a.Exists(ctx, node)
		if err != nil {
			t.Fatalf("the client's ephemeral on the primary: %v (deleted because the secondary's copy went missing)", err)
		}
		if stA.EphemeralOwner != client.SessionID() {
			t.Fatalf("the primary's node owned by 0x%x, not the client 0x%x", stA.EphemeralOwner, client.SessionID())
		}
		stB, err := b.Exists(ctx, node)
		if err != nil || stB.EphemeralOwner != shadow.SessionID() {
			t.Fatalf("the secondary's node: %v, owner 0x%x, want the shadow session 0x%x", err, stB.EphemeralOwner, shadow.SessionID())
		}
	}
	within(t, 5*time.Second, func() string {
		if n := c.Deferred(); n > 0 {
			return "differences still deferred"
		}
		return ""
	})
	// The client deletes its node on the primary: the replicator copies that at once.
	if err := client.Delete(ctx, node, -1); err != nil {
		t.Fatal(err)
	}
	within(t, testMirrorGrace*3/4, func() string {
		if _, err := b.Exists(ctx, node); jute.CodeOf(err) != jute.CodeNoNode {
			return "a deletion on the primary did not reach the secondary at once"
		}
		return ""
	})
}

// TestMirroredLateWriteIsNotCopiedBack: A's node goes v1, v2; a late
// mirror write puts v1 on B after the replicator copied v2, then the
// mirror's verification puts v2 back. The older value never reaches A
// (A's node is written twice, by its client, and never by the
// replicator), and no conflict is reported.
func TestMirroredLateWriteIsNotCopiedBack(t *testing.T) {
	ctx := context.Background()
	root := testRoot(t)
	node := root + "/state"
	_, conflicts := mirroredOn(t, root, node)
	a, b := dial(t, ensA), dial(t, ensB)
	for _, v := range []string{"v1", "v2"} {
		if _, err := a.Set(ctx, node, []byte(v), -1); err != nil {
			t.Fatal(err)
		}
	}
	within(t, testMirrorGrace*3/4, func() string {
		if d, _, err := b.Get(ctx, node); err != nil || string(d) != "v2" {
			return "A's change did not reach B at once"
		}
		return ""
	})
	if _, err := b.Set(ctx, node, []byte("v1"), -1); err != nil { // the late mirror write
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if _, err := b.Set(ctx, node, []byte("v2"), -1); err != nil { // its verification
		t.Fatal(err)
	}
	time.Sleep(2 * testMirrorGrace)
	d, st, err := a.Get(ctx, node)
	if err != nil {
		t.Fatal(err)
	}
	if string(d) != "v2" || st.Version != 2 {
		t.Fatalf("A's node is %q at version %d, want v2 at version 2: B's older value was copied back", d, st.Version)
	}
	if k := conflicts(); len(k) > 0 {
		t.Fatalf("conflicts reported for the mirror's writes: %+v", k)
	}
}

// TestMirroredBypassWritesAreCopied: clients that bypass the proxies are
// still the replicator's, on both sides, once their writes persisted for
// the grace: B's data change, creation, deletion and a client's ephemeral
// reach A; an ephemeral of a client writing A directly reaches B (owned by
// the replicator, since no shadow session mirrors it); each ephemeral's
// copy goes with its client.
func TestMirroredBypassWritesAreCopied(t *testing.T) {
	ctx := context.Background()
	root := testRoot(t)
	_, conflicts := mirroredOn(t, root, root+"/set", root+"/gone")
	a, b := dial(t, ensA), dial(t, ensB)
	onB, onA := mustDial(t, ensB), mustDial(t, ensA)
	if _, err := onB.Set(ctx, root+"/set", []byte("from B"), -1); err != nil {
		t.Fatal(err)
	}
	if _, err := onB.Create(ctx, root+"/new", []byte("n"), zkclient.OpenACL, 0); err != nil {
		t.Fatal(err)
	}
	if err := onB.Delete(ctx, root+"/gone", -1); err != nil {
		t.Fatal(err)
	}
	if _, err := onB.Create(ctx, root+"/eph-b", []byte("e"), zkclient.OpenACL, jute.FlagEphemeral); err != nil {
		t.Fatal(err)
	}
	if _, err := onA.Create(ctx, root+"/eph-a", []byte("e"), zkclient.OpenACL, jute.FlagEphemeral); err != nil {
		t.Fatal(err)
	}
	within(t, testMirrorGrace+10*time.Second, func() string {
		if d, _, err := a.Get(ctx, root+"/set"); err != nil || string(d) != "from B" {
			return "B's setData did not reach A"
		}
		if _, err := a.Exists(ctx, root+"/new"); err != nil {
			return "B's create did not reach A"
		}
		if _, err := a.Exists(ctx, root+"/gone"); jute.CodeOf(err) != jute.CodeNoNode {
			return "B's delete did not reach A"
		}
		if st, err := a.Exists(ctx, root+"/eph-b"); err != nil || st.EphemeralOwner == 0 || st.EphemeralOwner == onB.SessionID() {
			return "B's bypassing client's ephemeral did not reach A as the replicator's"
		}
		if st, err := b.Exists(ctx, root+"/eph-a"); err != nil || st.EphemeralOwner == 0 || st.EphemeralOwner == onA.SessionID() {
			return "A's bypassing client's ephemeral did not reach B as the replicator's"
		}
		return ""
	})
	_ = onB.Close()
	_ = onA.Close()
	within(t, testMirrorGrace+10*time.Second, func() string {
		if _, err := a.Exists(ctx, root+"/eph-b"); jute.CodeOf(err) != jute.CodeNoNode {
			return "the copy on A outlived B's bypassing client"
		}
		if _, err := b.Exists(ctx, root+"/eph-a"); jute.CodeOf(err) != jute.CodeNoNode {
			return "the copy on B outlived A's bypassing client"
		}
		return ""
	})
	if k := conflicts(); len(k) > 0 {
		t.Fatalf("conflicts reported: %+v", k)
	}
}

// TestMirroredResumeStillFindsConflicts: a replicator started without the
// initial copy (a new control leader) finds a znode different on both
// sides, written while no sync ran. Beside dual-writing proxies too that
// is a conflict, once it persisted for the grace (it is not the mirror's
// work), and last-write-wins settles it.
func TestMirroredResumeStillFindsConflicts(t *testing.T) {
	ctx := context.Background()
	root := testRoot(t)
	a, b := dial(t, ensA), dial(t, ensB)
	for _, c := range []*zkclient.Conn{a, b} {
		if _, err := c.Create(ctx, root, nil, zkclient.OpenACL, 0); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.Create(ctx, root+"/contended", []byte("written on A"), zkclient.OpenACL, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Create(ctx, root+"/contended", []byte("written on B"), zkclient.OpenACL, 0); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conflicts []Event
	c, err := NewContinuous(ContinuousConfig{Dial: dialSide, Roots: []string{root}, Heartbeat: -1,
		ReconcileEvery: time.Hour, Primary: ensemble.Source, MirrorGrace: testMirrorGrace, InheritGrace: time.Millisecond,
		OnEvent: func(e Event) {
			if e.Kind == "conflict" {
				mu.Lock()
				conflicts = append(conflicts, e)
				mu.Unlock()
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	runContinuous(t, c)
	within(t, testMirrorGrace+10*time.Second, func() string {
		mu.Lock()
		defer mu.Unlock()
		if len(conflicts) != 1 || conflicts[0].Conflict.Path != root+"/contended" {
			return fmt.Sprintf("want one conflict on %s/contended, got %+v", root, conflicts)
		}
		return ""
	})
	ep := endpoints(t, 1)
	waitEqual(t, ep, root, 10*time.Second)
}

// TestInitialCopyKeepsTheShadowSessionsEphemerals: phase 1's initial copy
// runs while two-ensemble proxies already mirror (the Mesos masters started
// behind them): a master's json.info_ on B is owned by its proxy's shadow
// session, which the flip makes the master's own. The copy must leave that
// owner alone: a copy owned by the replicator's session would vanish with
// it (a control leader's death, phase 6) and take the leader's znode from
// the new primary. Without Primary the copy owns it (a bypassing client's
// node has no shadow session to own it).
func TestInitialCopyKeepsTheShadowSessionsEphemerals(t *testing.T) {
	for _, dualWrite := range []bool{true, false} {
		ctx := context.Background()
		root := testRoot(t)
		a, b := dial(t, ensA), dial(t, ensB)
		for _, c := range []*zkclient.Conn{a, b} {
			if _, err := c.Create(ctx, root, nil, zkclient.OpenACL, 0); err != nil {
				t.Fatal(err)
			}
		}
		master, shadow := dial(t, ensA), dial(t, ensB)
		node := root + "/json.info_0000000000"
		for _, c := range []*zkclient.Conn{master, shadow} {
			if _, err := c.Create(ctx, node, []byte(`{"id":"m1"}`), zkclient.OpenACL, jute.FlagEphemeral); err != nil {
				t.Fatal(err)
			}
		}
		cfg := ContinuousConfig{Dial: dialSide, Roots: []string{root}, Heartbeat: -1, InitialSync: true, ReconcileEvery: time.Minute}
		if dualWrite {
			cfg.Primary, cfg.MirrorGrace = ensemble.Source, testMirrorGrace
		}
		c, err := NewContinuous(cfg)
		if err != nil {
			t.Fatal(err)
		}
		stop := runContinuous(t, c)
		for deadline := time.Now().Add(10 * time.Second); len(c.DigestsEqual()) == 0; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("no reconcile after the initial copy")
			}
		}
		st, err := b.Exists(ctx, node)
		if err != nil {
			t.Fatal(err)
		}
		stop()
		if dualWrite && st.EphemeralOwner != shadow.SessionID() {
			t.Fatalf("beside dual-writing proxies the initial copy took the shadow session's %s: owner %x, want %x", node, st.EphemeralOwner, shadow.SessionID())
		}
		if !dualWrite && st.EphemeralOwner == shadow.SessionID() {
			t.Fatalf("without proxies the copy left %s to a foreign session %x", node, st.EphemeralOwner)
		}
	}
}

// TestMirroredCopyingNamesBypassWritesOnly: the flip's guard accepts a
// difference only when Copying says the sync holds it as a write that
// bypassed the proxies on the secondary, with the primary's state still
// the one both sides agreed on. A create and a setData made on B directly
// are Copying until their grace ends (then they are on A); a change of
// the primary (a write B lacks) never is, nor the same path read with
// another state of the primary, nor under the other primary.
func TestMirroredCopyingNamesBypassWritesOnly(t *testing.T) {
	ctx := context.Background()
	root := testRoot(t)
	c, _ := mirroredOn(t, root, root+"/set")
	a := dial(t, ensA)
	onB := mustDial(t, ensB)
	defer onB.Close()
	nodeOnA := func(p string) *Node {
		d, st, err := a.Get(ctx, p)
		if jute.CodeOf(err) == jute.CodeNoNode {
			return nil
		}
		if err != nil {
			t.Fatal(err)
		}
		return &Node{Path: p, Data: d, Stat: st}
	}
	if _, err := onB.Create(ctx, root+"/new", []byte("n"), zkclient.OpenACL, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := onB.Set(ctx, root+"/set", []byte("from B"), -1); err != nil {
		t.Fatal(err)
	}
	within(t, testMirrorGrace*3/4, func() string {
		if !c.Copying(root+"/new", SideA, nodeOnA(root+"/new")) {
			return "B's bypassing create is not reported Copying"
		}
		if !c.Copying(root+"/set", SideA, nodeOnA(root+"/set")) {
			return "B's bypassing setData is not reported Copying"
		}
		return ""
	})
	set := nodeOnA(root + "/set")
	moved := *set
	moved.Stat.Mzxid++
	if c.Copying(root+"/set", SideA, &moved) {
		t.Fatal("Copying with the primary in another state than both agreed on")
	}
	if c.Copying(root+"/set", SideB, set) {
		t.Fatal("Copying under the other primary")
	}
	// A write on the primary, not yet on B: copied at once by the sync,
	// never a difference to accept.
	if _, err := a.Create(ctx, root+"/on-a", []byte("a"), zkclient.OpenACL, 0); err != nil {
		t.Fatal(err)
	}
	if c.Copying(root+"/on-a", SideA, nodeOnA(root+"/on-a")) {
		t.Fatal("a write on the primary reported Copying")
	}
	within(t, testMirrorGrace+10*time.Second, func() string {
		if nodeOnA(root+"/new") == nil {
			return "B's bypassing create did not reach A"
		}
		if d, _, err := a.Get(ctx, root+"/set"); err != nil || string(d) != "from B" {
			return "B's bypassing setData did not reach A"
		}
		return ""
	})
	if c.Copying(root+"/new", SideA, nodeOnA(root+"/new")) {
		t.Fatal("Copying after the copy")
	}
}
