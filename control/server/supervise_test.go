package server

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zk-migrate/zk-migrate/control"
	"github.com/zk-migrate/zk-migrate/ensemble"
)

// TestSyncTakenOverRecordsTheOldRunsStop: a new leader whose phase 1
// runner started the sync before its supervisor saw the old leader's run
// recorded sync-started over it, and the audit trail lost the gap (the
// old node's sync-stopped: TestSyncFollowsTheControlLeader failed so under
// load). Recording a run here while another node's is recorded running
// records that one's stop first. No ZooKeeper: the replicator started here
// never needs to reach its (absent) ensembles for the record.
func TestSyncTakenOverRecordsTheOldRunsStop(t *testing.T) {
	ctx := context.Background()
	var cfg control.Config
	cfg.Migration.ID = "over"
	cfg.Migration.SourceZK, cfg.Migration.TargetZK = "127.0.0.1:1", "127.0.0.1:2"
	cfg.Migration.Paths = []string{"/x"}
	raw, err := json.Marshal(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	since := time.Now().Add(-time.Minute).UTC()
	m := &control.Migration{ID: "over", Config: control.MigrationConfig{SourceZK: cfg.Migration.SourceZK, TargetZK: cfg.Migration.TargetZK, Raw: raw},
		Step: control.StepDeployB, Status: control.StatusRunning, Primary: ensemble.Source,
		Sync: control.SyncState{Running: true, Node: "c1", Since: since, Copied: true}}
	st := &control.State{Migrations: map[string]*control.Migration{m.ID: m}}
	var mu sync.Mutex
	sy := &Syncer{IsLeader: func() bool { return true }, NodeID: "c3", Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Apply: func(_ context.Context, c control.Command) error {
			mu.Lock()
			defer mu.Unlock()
			return st.Apply(c, uint64(len(st.Audit)+1))
		},
		State: func() *control.State {
			mu.Lock()
			defer mu.Unlock()
			b, _ := json.Marshal(st)
			cp := control.NewState()
			_ = json.Unmarshal(b, cp)
			return cp
		}}
	t.Cleanup(func() { _ = sy.Undo(ctx, m) })
	r, err := sy.start(m) // phase 1's runner on the new leader
	if err != nil {
		t.Fatal(err)
	}
	if err := sy.note(ctx, m.ID, r); err != nil {
		t.Fatal(err)
	}
	var trail []string
	for _, e := range sy.State().Audit {
		trail = append(trail, e.Action+" "+e.Detail+" "+e.Result)
	}
	got := strings.Join(trail, "\n")
	stopped := strings.Index(got, "sync-stopped node=c1 error=c1 stopped running it (leadership moved to c3) ok")
	started := strings.Index(got, "sync-started ")
	if stopped < 0 || started < 0 || stopped > started || !strings.Contains(got[started:], "node=c3 ok") {
		t.Fatalf("audit trail of a sync taken over from c1 by c3:\n%s\nwant c1's sync-stopped, then c3's sync-started", got)
	}
}
