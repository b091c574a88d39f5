package control

import (
	"strings"
	"testing"
	"time"

	"github.com/zk-migrate/zk-migrate/ensemble"
)

// TestSyncRequiredFromPhase1ToPhase6: the replicator must run from phase 1
// until phase 6 runs, in every status (succeeded while waiting for the
// flip included), and while a rollback needs it; a follower can tell from
// the state alone that it is not running on the leader.
func TestSyncRequiredFromPhase1ToPhase6(t *testing.T) {
	for _, c := range []struct {
		step       Step
		status     Status
		rollbackTo Step
		primary    ensemble.Name
		want       bool
	}{
		{StepNone, StatusPending, 0, "A", false},
		{StepDeployB, StatusAwaitingApproval, 0, "A", false},
		{StepDeployB, StatusRunning, 0, "A", true},
		{StepDeployB, StatusSucceeded, 0, "A", true},
		{StepDeployB, StatusFailed, 0, "A", true},
		{StepFlip, StatusAwaitingApproval, 0, "A", true},
		{StepFlip, StatusFailed, 0, "A", true},
		{StepMastersOnB, StatusSucceeded, 0, "B", true},
		{StepDrainAgentsA, StatusRunning, 0, "B", true},
		{StepRemoveA, StatusAwaitingApproval, 0, "B", true},
		{StepRemoveA, StatusRunning, 0, "B", false},
		{StepDone, StatusCompleted, 0, "B", false},
		{StepMastersOnB, StatusRollingBack, StepDeployB, "B", true},
		{StepMastersOnB, StatusRollingBack, StepNone, "B", true}, // the reverse flip needs it
		{StepDeployB, StatusRollingBack, StepNone, "A", false},
	} {
		m := &Migration{Step: c.step, Status: c.status, RollbackTo: c.rollbackTo, Primary: c.primary}
		if got := m.SyncRequired(); got != c.want {
			t.Errorf("%s %s (rollback to %s, primary %s): SyncRequired %v, want %v", c.step, c.status, c.rollbackTo, c.primary, got, c.want)
		}
	}
	m := &Migration{Step: StepDeployB, Status: StatusSucceeded, Sync: SyncState{Running: true, Node: "c1", Copied: true}}
	for leader, want := range map[string]string{
		"c1": "",
		"c2": "it ran on c1, which no longer leads",
		"":   "no control-plane leader",
	} {
		if got := m.SyncProblem(leader); (want == "") != (got == "") || !strings.Contains(got, want) {
			t.Errorf("leader %q: SyncProblem %q, want %q", leader, got, want)
		}
	}
	m.Sync.Running, m.Sync.Stopped = false, "c1 stopped running it"
	if got := m.SyncProblem("c2"); !strings.Contains(got, "sync is not running: c1 stopped running it") {
		t.Errorf("stopped: %q", got)
	}
	// A start after phase 1 succeeded never copies, recorded or not.
	for _, c := range []struct {
		m    Migration
		want bool
	}{
		{Migration{Step: StepDeployB, Status: StatusRunning}, false},
		{Migration{Step: StepDeployB, Status: StatusRunning, Sync: SyncState{Copied: true}}, true},
		{Migration{Step: StepDeployB, Status: StatusSucceeded}, true},
		{Migration{Step: StepFlip, Status: StatusFailed}, true},
	} {
		if got := c.m.SyncCopied(); got != c.want {
			t.Errorf("%s %s copied=%v: SyncCopied %v", c.m.Step, c.m.Status, c.m.Sync.Copied, got)
		}
	}
}

// TestSyncCheckpointIsTheRunningReplicators: only the replicator recorded
// as running may record a checkpoint (a former leader's late one is
// refused), and a checkpoint leaves no audit entry (one per reconcile).
func TestSyncCheckpointIsTheRunningReplicators(t *testing.T) {
	s := NewState()
	now := time.Now().UTC()
	for _, c := range []Command{
		{Kind: CmdCreate, Migration: "m", Config: &MigrationConfig{}, Time: now},
		{Kind: CmdStart, Migration: "m", Time: now},
		{Kind: CmdSyncStarted, Migration: "m", Node: "c1", Time: now},
	} {
		if err := s.Apply(c, 0); err != nil {
			t.Fatal(err)
		}
	}
	entries := len(s.Audit)
	cp := &SyncCheckpoint{Zxid: [2]int64{10, 20}, Sessions: [2]int64{1, 2}, Time: now, Node: "c2"}
	if err := s.Apply(Command{Kind: CmdSyncCheckpoint, Migration: "m", Node: "c2", Checkpoint: cp, Time: now}, 0); err == nil {
		t.Fatal("a checkpoint of c2, whose sync is not recorded as running, was accepted")
	}
	cp.Node = "c1"
	if err := s.Apply(Command{Kind: CmdSyncCheckpoint, Migration: "m", Node: "c1", Checkpoint: cp, Time: now}, 0); err != nil {
		t.Fatal(err)
	}
	if got := s.Migrations["m"].Sync.Checkpoint; got == nil || got.Zxid != cp.Zxid || got.Node != "c1" {
		t.Fatalf("checkpoint recorded: %+v", got)
	}
	if len(s.Audit) != entries {
		t.Fatalf("checkpoints left %d audit entries", len(s.Audit)-entries)
	}
}
