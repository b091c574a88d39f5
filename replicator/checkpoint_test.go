package replicator

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// TestResumeFromCheckpointKeepsDeletions is a new control leader's
// replicator (no initial copy) taking over from one that stopped, with
// changes made on both sides while no sync ran: deletions on either side
// must reach the other side (not be copied back), creations and updates
// must be copied, and a znode deleted on one side but updated on the other
// keeps the update (a deletion never beats an update). Without the
// checkpoint the deleted znodes come back.
func TestResumeFromCheckpointKeepsDeletions(t *testing.T) {
	ctx := context.Background()
	root := testRoot(t)
	a, b := dial(t, ensA), dial(t, ensB)
	for _, p := range []string{root, root + "/gone-on-b", root + "/gone-on-a", root + "/set-on-b", root + "/del-b-set-a",
		root + "/parent", root + "/parent/child"} {
		if _, err := a.Create(ctx, p, []byte("v0"), zkclient.OpenACL, 0); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	var taken []Checkpoint
	first, err := NewContinuous(ContinuousConfig{Dial: dialSide, Roots: []string{root}, Heartbeat: -1, InitialSync: true,
		ReconcileEvery: 200 * time.Millisecond, OnCheckpoint: func(cp Checkpoint) {
			mu.Lock()
			taken = append(taken, cp)
			mu.Unlock()
		}})
	if err != nil {
		t.Fatal(err)
	}
	stop := runContinuous(t, first)
	waitEqual(t, endpoints(t, 1), root, 10*time.Second)
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := len(taken)
		mu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no checkpoint after the initial copy and an equal reconcile")
		}
		time.Sleep(20 * time.Millisecond)
	}
	stop()
	mu.Lock()
	cp := taken[len(taken)-1]
	mu.Unlock()
	if cp.Zxid[SideA] == 0 || cp.Zxid[SideB] == 0 || cp.Sessions[SideA] == 0 {
		t.Fatalf("checkpoint without zxids or sessions: %+v", cp)
	}
	if got := first.LastCheckpoint(); got == nil || got.Zxid != cp.Zxid {
		t.Fatalf("LastCheckpoint %+v, want the last one reported %+v", got, cp)
	}

	// While no sync runs.
	mustDo(t, b.Delete(ctx, root+"/gone-on-b", -1))
	mustDo(t, a.Delete(ctx, root+"/gone-on-a", -1))
	mustDo(t, b.Delete(ctx, root+"/parent/child", -1))
	mustDo(t, b.Delete(ctx, root+"/parent", -1))
	_, err = b.Set(ctx, root+"/set-on-b", []byte("v1"), -1)
	mustDo(t, err)
	mustDo(t, b.Delete(ctx, root+"/del-b-set-a", -1))
	_, err = a.Set(ctx, root+"/del-b-set-a", []byte("kept"), -1)
	mustDo(t, err)
	_, err = a.Create(ctx, root+"/new-on-a", []byte("n"), zkclient.OpenACL, 0)
	mustDo(t, err)
	_, err = b.Create(ctx, root+"/new-on-b", []byte("n"), zkclient.OpenACL, 0)
	mustDo(t, err)

	next, err := NewContinuous(ContinuousConfig{Dial: dialSide, Roots: []string{root}, Heartbeat: -1,
		ReconcileEvery: 200 * time.Millisecond, Checkpoint: &cp})
	if err != nil {
		t.Fatal(err)
	}
	runContinuous(t, next)
	waitEqual(t, endpoints(t, 1), root, 15*time.Second)
	for _, p := range []string{"/gone-on-b", "/gone-on-a", "/parent", "/parent/child"} {
		for side, c := range map[string]*zkclient.Conn{"A": a, "B": b} {
			if _, err := c.Exists(ctx, root+p); jute.CodeOf(err) != jute.CodeNoNode {
				t.Errorf("%s on %s: %v, want it deleted (it was deleted on one side while no sync ran)", p, side, err)
			}
		}
	}
	for p, want := range map[string]string{"/set-on-b": "v1", "/del-b-set-a": "kept", "/new-on-a": "n", "/new-on-b": "n"} {
		for side, c := range map[string]*zkclient.Conn{"A": a, "B": b} {
			got, _, err := c.Get(ctx, root+p)
			if err != nil || string(got) != want {
				t.Errorf("%s on %s: %q %v, want %q", p, side, got, err, want)
			}
		}
	}
}

// TestCheckpointFromAnotherHistoryIsIgnored: a checkpoint whose zxids are
// above the ensembles' (they were rebuilt since) must not be used to delete
// anything: the replicator falls back to copying what one side lacks.
func TestCheckpointFromAnotherHistoryIsIgnored(t *testing.T) {
	ctx := context.Background()
	root := testRoot(t)
	a, b := dial(t, ensA), dial(t, ensB)
	for _, c := range []*zkclient.Conn{a, b} {
		_, err := c.Create(ctx, root, nil, zkclient.OpenACL, 0)
		mustDo(t, err)
	}
	_, err := a.Create(ctx, root+"/only-on-a", []byte("x"), zkclient.OpenACL, 0)
	mustDo(t, err)
	future := &Checkpoint{Zxid: [2]int64{1 << 62, 1 << 62}, Time: time.Now()}
	c, err := NewContinuous(ContinuousConfig{Dial: dialSide, Roots: []string{root}, Heartbeat: -1,
		ReconcileEvery: 200 * time.Millisecond, Checkpoint: future})
	if err != nil {
		t.Fatal(err)
	}
	runContinuous(t, c)
	waitEqual(t, endpoints(t, 1), root, 10*time.Second)
	if _, _, err := b.Get(ctx, root+"/only-on-a"); err != nil {
		t.Fatalf("only-on-a was not copied to B: %v", err)
	}
}

func mustDo(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
