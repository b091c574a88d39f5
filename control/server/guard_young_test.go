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
