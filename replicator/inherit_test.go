package replicator

import (
	"context"
	"testing"
	"time"

	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// TestResumedSyncKeepsAnEphemeralWhoseFormerCopyExpires is a new control
// leader's replicator (no initial copy) taking over from one that was
// killed: a client's ephemeral on A has a copy on B owned by the dead
// replicator's session. When that session expires the copy goes; the
// ephemeral on A must not be deleted with it, and the copy comes back
// under the new replicator. A later real deletion on A still propagates.
func TestResumedSyncKeepsAnEphemeralWhoseFormerCopyExpires(t *testing.T) {
	ctx := context.Background()
	root := testRoot(t)
	a, b := dial(t, ensA), dial(t, ensB)
	for _, c := range []*zkclient.Conn{a, b} {
		if _, err := c.Create(ctx, root, []byte("r"), zkclient.OpenACL, 0); err != nil {
			t.Fatal(err)
		}
	}
	owner, err := zkclient.Dial(ctx, ensA.Addrs(), zkclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Close()
	former, err := zkclient.Dial(ctx, ensB.Addrs(), zkclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer former.Close()
	node := root + "/json.info_0000000000"
	if _, err := owner.Create(ctx, node, []byte("m1"), zkclient.OpenACL, jute.FlagEphemeral); err != nil {
		t.Fatal(err)
	}
	if _, err := former.Create(ctx, node, []byte("m1"), zkclient.OpenACL, jute.FlagEphemeral); err != nil {
		t.Fatal(err)
	}
	const grace = 2 * time.Second
	c, err := NewContinuous(ContinuousConfig{Dial: dialSide, Roots: []string{root}, Heartbeat: -1,
		ReconcileEvery: 300 * time.Millisecond, InheritGrace: grace})
	if err != nil {
		t.Fatal(err)
	}
	runContinuous(t, c)
	ep := endpoints(t, 1)
	waitEqual(t, ep, root, 10*time.Second)
	for !c.DigestsEqual()[root] { // the replicator has decided every path
		time.Sleep(20 * time.Millisecond)
	}
	// The former replicator's session ends: its copy on B goes.
	formerID, ownerID := former.SessionID(), owner.SessionID()
	if err := former.Close(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(grace + 10*time.Second)
	for {
		stA, errA := a.Exists(ctx, node)
		if jute.CodeOf(errA) == jute.CodeNoNode {
			t.Fatal("the client's ephemeral on A was deleted when the former copy on B expired")
		}
		stB, errB := b.Exists(ctx, node)
		if errA == nil && errB == nil && stB.EphemeralOwner != 0 && stB.EphemeralOwner != formerID {
			if stA.EphemeralOwner != ownerID {
				t.Fatalf("A's node is owned by %x, not the client %x", stA.EphemeralOwner, ownerID)
			}
			break // copied again, under the new replicator
		}
		if time.Now().After(deadline) {
			t.Fatalf("the copy on B did not come back (A: %v, B: %v)", errA, errB)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The client goes: its node and the copy go.
	if err := owner.Close(); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		if _, err := b.Exists(ctx, node); jute.CodeOf(err) == jute.CodeNoNode {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the copy on B outlived the client's node on A")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
