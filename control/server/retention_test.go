package server

import (
	"context"
	"testing"
	"time"

	"github.com/zk-migrate/zk-migrate/control"
	"github.com/zk-migrate/zk-migrate/raftstore"
	"github.com/zk-migrate/zk-migrate/zktest"
)

// TestAuditPrunerEnforcesRetention: on a real Raft node the pruner drops
// the entries older than the retention (not those of a migration still
// running), leaves an anchor, writes an attributed audit-prune entry, and
// proposes nothing when nothing is old enough.
func TestAuditPrunerEnforcesRetention(t *testing.T) {
	raftAddr, err := zktest.StableAddr()
	if err != nil {
		t.Fatal(err)
	}
	n, err := raftstore.Open(raftstore.Config{ID: "solo", Dir: t.TempDir(), BindAddr: raftAddr, Bootstrap: true,
		HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond, LeaderLeaseTimeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	for !n.IsLeader() {
		time.Sleep(10 * time.Millisecond)
	}
	ctx := context.Background()
	now := time.Date(2027, 6, 1, 0, 0, 0, 0, time.UTC)
	old := now.Add(-400 * 24 * time.Hour)
	for _, c := range []control.Command{
		{Kind: control.CmdRecord, By: "node:solo", Event: "leader-changed", Time: old},
		{Kind: control.CmdRecord, By: "node:solo", Event: "leader-changed", Time: old.Add(time.Hour)},
		{Kind: control.CmdCreate, Migration: "running", By: "olga", Time: old.Add(2 * time.Hour), Config: &control.MigrationConfig{}},
		{Kind: control.CmdStart, Migration: "running", By: "olga", Time: now.Add(-time.Hour)},
	} {
		if err := n.Apply(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	p := &AuditPruner{Apply: n.Apply, State: n.State, IsLeader: n.IsLeader, NodeID: "solo",
		Retention: DefaultAuditRetention, Now: func() time.Time { return now }}
	p.once(ctx)
	st := n.State()
	if st.AuditAnchor == nil || st.AuditAnchor.Seq != 2 || len(st.Audit) != 3 || st.Audit[0].Migration != "running" {
		t.Fatalf("after prune: anchor %+v audit %+v", st.AuditAnchor, st.Audit)
	}
	if e := st.Audit[2]; e.Action != "audit-prune" || e.By != "node:solo" {
		t.Fatalf("prune entry: %+v", e)
	}
	if _, err := control.VerifyAudit(st.Audit); err != nil {
		t.Fatal(err)
	}
	p.once(ctx)
	if got := len(n.State().Audit); got != 3 {
		t.Fatalf("a prune with nothing to prune wrote an entry: %d entries", got)
	}
}
