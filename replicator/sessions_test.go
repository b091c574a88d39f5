package replicator

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// markAsProxy marks c's session as a proxy's, as a two-ensemble proxy
// does: the marker's creates sent first on the session, pipelined, nothing
// waiting for them before the session's own requests.
func markAsProxy(t *testing.T, c *zkclient.Conn) func() {
	t.Helper()
	var calls []*zkclient.Call
	for _, r := range SessionMarkerCreates(c.SessionID(), true) {
		calls = append(calls, c.Go(jute.OpCreate, r, &jute.CreateResponse{}))
	}
	return func() {
		t.Helper()
		for i, call := range calls {
			<-call.Done
			if code := jute.CodeOf(call.Err); code != jute.CodeOK && !(code == jute.CodeNodeExists && i < len(calls)-1) {
				t.Fatalf("session marker: create %d: %v", i, call.Err)
			}
		}
	}
}

// TestMirroredProxySessionsEphemeralIsNeverCopied: the flip scenario of
// issue 12. A master's ephemeral stays on the secondary B, owned by its
// proxy's shadow session (whose close is pending), after the master's
// session on the primary A ended while no sync ran; a new replicator then
// starts from an older checkpoint. The shadow session marked itself on B
// (SessionMarker), so the node is never taken for a bypassing client's
// and never copied to A, and the flip's guard is not told it is
// (Copying); a bypassing client's ephemeral made on B beside it still
// reaches A. The markers are neither copied to A nor seen in a tree read.
// Without the markers the master's node came back on A: a dead master
// resurrected on the primary.
func TestMirroredProxySessionsEphemeralIsNeverCopied(t *testing.T) {
	ctx := context.Background()
	root := testRoot(t)
	a, b := dial(t, ensA), dial(t, ensB)
	for _, c := range []*zkclient.Conn{a, b} {
		if _, err := c.Create(ctx, root, []byte("v0"), zkclient.OpenACL, 0); err != nil {
			t.Fatal(err)
		}
	}
	// A former replicator's checkpoint, taken before any of it.
	var mu sync.Mutex
	var taken []Checkpoint
	first, err := NewContinuous(ContinuousConfig{Dial: dialSide, Roots: []string{root}, Heartbeat: -1, InitialSync: true,
		ReconcileEvery: 200 * time.Millisecond, Primary: ensemble.Source, MirrorGrace: testMirrorGrace,
		OnCheckpoint: func(cp Checkpoint) {
			mu.Lock()
			taken = append(taken, cp)
			mu.Unlock()
		}})
	if err != nil {
		t.Fatal(err)
	}
	stop := runContinuous(t, first)
	within(t, 20*time.Second, func() string {
		mu.Lock()
		defer mu.Unlock()
		if len(taken) == 0 {
			return "no checkpoint after the initial copy"
		}
		return ""
	})
	stop()
	mu.Lock()
	cp := taken[len(taken)-1]
	mu.Unlock()

	// The master through its proxy: its session on A and the shadow on B,
	// each marked first, as the proxy does.
	node, bypass := root+"/json.info_0000000001", root+"/bypass"
	master, shadow := mustDial(t, ensA), mustDial(t, ensB)
	masterMarked, shadowMarked := markAsProxy(t, master), markAsProxy(t, shadow)
	if _, err := master.Create(ctx, node, []byte("master"), zkclient.OpenACL, jute.FlagEphemeral); err != nil {
		t.Fatal(err)
	}
	if _, err := shadow.Create(ctx, node, []byte("master"), zkclient.OpenACL, jute.FlagEphemeral); err != nil {
		t.Fatal(err)
	}
	masterMarked()
	shadowMarked()
	// A client bypassing the proxies on B.
	direct := mustDial(t, ensB)
	if _, err := direct.Create(ctx, bypass, []byte("direct"), zkclient.OpenACL, jute.FlagEphemeral); err != nil {
		t.Fatal(err)
	}
	// The master stops: its session on A ends, the shadow's close waits.
	if err := master.Close(); err != nil {
		t.Fatal(err)
	}

	c, err := NewContinuous(ContinuousConfig{Dial: dialSide, Roots: []string{root}, Heartbeat: 100 * time.Millisecond,
		ReconcileEvery: 300 * time.Millisecond, Primary: ensemble.Source, MirrorGrace: testMirrorGrace, Checkpoint: &cp})
	if err != nil {
		t.Fatal(err)
	}
	runContinuous(t, c)
	// Within the grace the bypass write is held as one (the flip's guard
	// may accept it), the proxy's node never.
	within(t, 10*time.Second, func() string {
		if !c.Copying(bypass, SideA, nil) {
			return "the bypassing client's ephemeral on B is not held as a bypass write"
		}
		return ""
	})
	if c.Copying(node, SideA, nil) {
		t.Fatal("the flip's guard is told the proxy session's ephemeral on B is a bypass write")
	}
	within(t, testMirrorGrace+10*time.Second, func() string {
		if st, err := a.Exists(ctx, bypass); err != nil || st.EphemeralOwner == direct.SessionID() {
			return "the bypassing client's ephemeral on B did not reach A"
		}
		return ""
	})
	// Decided in the same round; and again at every reconcile since.
	for end := time.Now().Add(2 * testMirrorGrace); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if _, err := a.Exists(ctx, node); jute.CodeOf(err) != jute.CodeNoNode {
			t.Fatalf("the proxy session's ephemeral on B was copied to A (the stopped master resurrected on the primary): %v", err)
		}
		if c.Copying(node, SideA, nil) {
			t.Fatal("the flip's guard is told the proxy session's ephemeral on B is a bypass write")
		}
	}
	if st, err := b.Exists(ctx, node); err != nil || st.EphemeralOwner != shadow.SessionID() {
		t.Fatalf("the shadow session's node on B was not left alone: %+v %v", st, err)
	}
	// The markers: the shadow's on B, never copied to A (the replicator
	// syncs /zk-migrate, its heartbeats' root), never in a tree.
	if _, err := b.Exists(ctx, SessionMarker(shadow.SessionID())); err != nil {
		t.Fatalf("the shadow session's marker on B: %v", err)
	}
	if _, err := a.Exists(ctx, SessionMarker(shadow.SessionID())); jute.CodeOf(err) != jute.CodeNoNode {
		t.Fatalf("the shadow session's marker was copied to A: %v", err)
	}
	tree, err := ReadTree(ctx, []*zkclient.Conn{b}, HeartbeatRoot, ReadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for p := range tree.Nodes {
		if isSessionMarker(p) {
			t.Fatalf("a tree read holds %s", p)
		}
	}
	if n := tree.Nodes[HeartbeatRoot]; n == nil || slices.Contains(n.Children, "sessions") {
		t.Fatalf("%s as read: %+v", HeartbeatRoot, n)
	}
	if tree, err = ReadTree(ctx, []*zkclient.Conn{b}, SessionMarkers, ReadOptions{}); err != nil || len(tree.Nodes) != 0 {
		t.Fatalf("a tree read of %s: %v %v", SessionMarkers, tree, err)
	}
}
