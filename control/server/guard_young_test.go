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
// timeout, which the barrier answers by holding again), not a finding that
// aborts the flip: the flip scenario under faults failed its flip step
// this way ("the replicator has not replicated yet ... since it started
// 100ms ago"). A replicator older than the heartbeats' staleness without
// a heartbeat is still a finding.
func TestGuardOnAYoungReplicatorIsNoVerdict(t *testing.T) {
	m := &control.Migration{ID: "young", Config: control.MigrationConfig{Raw: []byte(`{}`)}}
	sy := &Syncer{IsLeader: func() bool { return true }, NodeID: "n1", Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		running: map[string]*syncRun{m.ID: {started: time.Now()}}}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	err := sy.FlipReady(ctx, m, ensemble.Source, ensemble.Target)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "has not replicated yet") {
		t.Fatalf("young replicator: %v, want a timeout (the barrier holds again)", err)
	}

	sy.running[m.ID].started = time.Now().Add(-2 * stale)
	ctx, cancel = context.WithTimeout(context.Background(), 300*time.Millisecond)
	err = sy.FlipReady(ctx, m, ensemble.Source, ensemble.Target)
	cancel()
	if err == nil || errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "has not replicated yet") {
		t.Fatalf("replicator without a heartbeat for %v: %v, want a finding", 2*stale, err)
	}
}
