package raftstore

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/zk-migrate/zk-migrate/control"
)

// TestAuditChainIdenticalOnEveryNode: three nodes apply the same commands
// (a prune among them) and hold the same hash chain; a node restarted from
// a snapshot plus its log rebuilds exactly that chain and keeps extending
// it, and the chain verifies on every node.
func TestAuditChainIdenticalOnEveryNode(t *testing.T) {
	ctx := context.Background()
	nodes, dirs, addrs := cluster(t)
	defer func() {
		for _, n := range nodes {
			if n != nil {
				n.Close()
			}
		}
	}()
	// apply goes to whichever node leads now (elections under load).
	apply := func(c control.Command) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			err := leaderOf(t, nodes).Apply(ctx, c)
			if err == nil {
				return
			}
			if !errors.Is(err, ErrNotLeader) || time.Now().After(deadline) {
				t.Fatalf("%s: %v", c.Kind, err)
			}
		}
	}
	old := cmd(control.CmdRecord, 0)
	old.Migration, old.Event, old.Time = "", "leader-changed", time.Unix(1600000000, 0).UTC()
	apply(old)
	create := cmd(control.CmdCreate, 0)
	create.Config = &control.MigrationConfig{SourceZK: "a:2181", TargetZK: "b:2181"}
	apply(create)
	apply(cmd(control.CmdStart, 0))
	// The old record (2020) goes: retention one year at 2023.
	apply(control.Command{Kind: control.CmdAuditPrune, By: "node:c1", Time: time.Unix(1700000000, 0).UTC(), Retention: 365 * 24 * time.Hour})
	st := waitSame(t, nodes)
	// The anchor is the old record (seq 2 if a retry after a lost
	// leadership applied it twice), and nothing after it is that old.
	if st.AuditAnchor == nil || !st.AuditAnchor.Time.Equal(old.Time) || len(st.Audit) == 0 || !st.Audit[0].Time.After(old.Time) {
		t.Fatalf("anchor after prune: %+v", st.AuditAnchor)
	}
	pruned := st.AuditAnchor.Seq
	for _, n := range nodes {
		if err := n.Snapshot(); err != nil {
			t.Fatalf("snapshot on %s: %v", n.ID(), err)
		}
	}
	apply(cmd(control.CmdStepRunning, control.StepDeployB))

	// Restart a follower from its files: snapshot, then the log after it.
	l, k := leaderOf(t, nodes), 0
	for i, n := range nodes {
		if n != l {
			k = i
			break
		}
	}
	if err := nodes[k].Close(); err != nil {
		t.Fatal(err)
	}
	nodes[k] = nil
	apply(cmd(control.CmdStepSucceeded, control.StepDeployB))
	nodes[k] = open(t, fmt.Sprintf("c%d", k+1), dirs[k], addrs[k], false)
	st = waitSame(t, nodes)
	sum, err := control.VerifyAudit(st.Audit)
	if err != nil {
		t.Fatalf("chain after restart: %v", err)
	}
	// Six commands (more if a retry after a lost leadership repeated one),
	// the old record(s) pruned.
	if sum.Anchor != st.AuditAnchor.Hash || sum.LastSeq < 6 || uint64(sum.Entries) != sum.LastSeq-pruned {
		t.Fatalf("chain summary: %+v (anchor %+v)", sum, st.AuditAnchor)
	}
	for _, n := range nodes {
		a := n.State().Audit
		if h := a[len(a)-1].Hash; h != sum.Head {
			t.Fatalf("%s's head %s, want %s", n.ID(), h, sum.Head)
		}
	}
}
