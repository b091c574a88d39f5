package control

import (
	"github.com/zk-migrate/zk-migrate/ensemble"
	"strings"
	"testing"
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
