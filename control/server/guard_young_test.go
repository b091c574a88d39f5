package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/zk-migrate/zk-migrate/control"
	"github.com/zk-migrate/zk-migrate/ensemble"
)

// TestGuardOnAYoungReplicatorIsNoVerdict: a new control leader (the old
// one SIGKILLed inside a flip's barrier) starts its replicator and runs
// the guard at once; no heartbeat has crossed yet. That is no verdict (a
// timeout, which the barrier answers by holding again, up to three
// times), not a finding that aborts the flip: the flip scenario under
// faults failed its flip step this way ("the replicator has not
// replicated yet ... since it started 100ms ago"). The same for a
// replicator whose last heartbeat is stale (it is reconnecting after a
// ZooKeeper server died: "no heartbeat from A has reached B for 4.4s"),
// and for one not started yet ("the replicator is not running on the
// leader").
func TestGuardOnAYoungReplicatorIsNoVerdict(t *testing.T) {
	m := &control.Migration{ID: "young", Config: control.MigrationConfig{Raw: []byte(`{}`)}}
	sy := &Syncer{IsLeader: func() bool { return true }, NodeID: "n1", Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		running: map[string]*syncRun{m.ID: {started: time.Now()}}}
	idle := &Syncer{IsLeader: func() bool { return true }, NodeID: "n1", Logger: sy.Logger}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	err := idle.FlipReady(ctx, m, ensemble.Source, ensemble.Target)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "not running on the leader") {
		t.Fatalf("replicator not started yet: %v, want a timeout (the barrier holds again)", err)
	}
	for _, c := range []struct {
		name, want string
		setup      func(r *syncRun)
	}{
		{"young", "has not replicated yet", func(*syncRun) {}},
		{"reconnecting", "not replicating: no heartbeat from A has reached B for", func(r *syncRun) {
			r.started = time.Now().Add(-time.Minute)
			r.beat[0].Store(time.Now().Add(-2 * stale).UnixNano())
			r.beat[1].Store(time.Now().UnixNano())
		}},
	} {
		c.setup(sy.running[m.ID])
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		err := sy.FlipReady(ctx, m, ensemble.Source, ensemble.Target)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("%s replicator: %v, want a timeout saying %q (the barrier holds again)", c.name, err, c.want)
		}
	}
}

// TestGuardOnLagOfAYoungReplicatorIsNoVerdict: a lag above the threshold
// measured by a replicator that has just started (a new control leader's,
// in its first full reconcile), or on a heartbeat written before it
// started, is no verdict (the barrier holds again), not a finding that
// aborts the flip: the new leader's guard aborted a flip on "sync lag
// 2.35s above the threshold 2s" just after its replicator started. A lag
// measured by a replicator past that, on its own heartbeat, is still a
// finding.
func TestGuardOnLagOfAYoungReplicatorIsNoVerdict(t *testing.T) {
	now := time.Now()
	threshold := 2 * time.Second
	lag := [2]time.Duration{2350 * time.Millisecond, 10 * time.Millisecond}
	fresh := [2]int64{now.UnixNano(), now.UnixNano()}
	if err := lagProblem([2]time.Duration{time.Second, time.Second}, threshold, now.Add(-time.Hour), fresh, now); err != nil {
		t.Fatalf("lag under the threshold: %v, want nil", err)
	}
	young := lagProblem(lag, threshold, now.Add(-200*time.Millisecond), fresh, now)
	if !errors.Is(young, errNoVerdictYet) || !strings.Contains(young.Error(), "2.35s") {
		t.Fatalf("lag measured by a replicator started 200ms ago: %v, want no verdict (the barrier holds again)", young)
	}
	// Older than youngLag, but the heartbeat measured was written 2.35 s
	// before the observation, before the replicator started.
	started := now.Add(-youngLag - time.Second)
	stale := [2]int64{started.Add(time.Second).UnixNano(), now.UnixNano()}
	if err := lagProblem(lag, threshold, started, stale, now); !errors.Is(err, errNoVerdictYet) {
		t.Fatalf("lag measured on a heartbeat written before the replicator started: %v, want no verdict", err)
	}
	found := lagProblem(lag, threshold, now.Add(-time.Minute), fresh, now)
	if found == nil || errors.Is(found, errNoVerdictYet) || !strings.Contains(found.Error(), "above the threshold") {
		t.Fatalf("lag of a replicator running for a minute, on its own heartbeat: %v, want a finding", found)
	}
}
