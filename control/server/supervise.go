package server

import (
	"context"
	"fmt"
	"time"

	"github.com/zk-migrate/zk-migrate/alert"
	"github.com/zk-migrate/zk-migrate/control"
)

// Supervise makes the replicator and the ensembles' health checks follow
// leadership until ctx ends: every SuperviseEvery (500 ms) the leader
// starts the sync of every migration that needs one
// (control.Migration.SyncRequired) from the replicated state, and stops
// the ones that no longer do, and runs the health checks of every
// migration between phase 1's start and done (quorum of A and B, the Mesos
// leader: alerts and metrics); a node that is not the leader stops all of
// its own. Each start and stop is recorded in the
// replicated state (sync-started, sync-stopped), so the audit trail shows
// the gap a leader change leaves, and taking over from a node that stopped
// without saying so (killed, partitioned) raises a sync_stopped alert.
//
// A start after the initial copy never copies again: it resumes continuous
// sync, whose first reconcile decides every path from both sides (a copy
// would delete what is only on the target).
func (s *Syncer) Supervise(ctx context.Context) {
	every := s.SuperviseEvery
	if every == 0 {
		every = 500 * time.Millisecond
	}
	t := time.NewTicker(every)
	defer t.Stop()
	defer s.stopAll()
	defer s.stopHealth()
	caughtUp := false // this node applied everything committed since it leads
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !s.IsLeader() {
			caughtUp = false
			s.stopHealth()
			if n := s.stopAll(); n > 0 {
				s.Logger.Warn("leadership lost: stopped the sync here; the new leader starts its own", "migrations", n)
			}
			continue
		}
		if !caughtUp && s.Barrier != nil {
			// A new leader may not have applied what its predecessor
			// committed: act on the whole state, not part of it.
			if err := s.Barrier(5 * time.Second); err != nil {
				s.Logger.Warn("sync supervisor: catching up with the log", "err", err)
				continue
			}
		}
		caughtUp = true
		st := s.State()
		s.superviseHealth(ctx, st)
		for _, id := range st.MigrationIDs() {
			if err := s.supervise(ctx, st.Migrations[id]); err != nil && ctx.Err() == nil {
				s.Logger.Warn("sync supervisor", "migration", id, "err", err)
			}
		}
		s.mu.Lock()
		var gone []string
		for id := range s.running {
			if st.Migrations[id] == nil {
				gone = append(gone, id)
			}
		}
		s.mu.Unlock()
		for _, id := range gone {
			s.stop(id)
		}
	}
}

func (s *Syncer) syncCmd(kind control.Kind, m *control.Migration, node, why string) control.Command {
	return control.Command{Kind: kind, Migration: m.ID, Node: node, Error: why, By: "node:" + s.NodeID, Time: time.Now().UTC()}
}

// supervise brings one migration's sync in line with its state.
func (s *Syncer) supervise(ctx context.Context, m *control.Migration) error {
	want := m.SyncRequired()
	r := s.run(m.ID)
	switch {
	case want && r == nil && m.Sync.Node == "" && m.Step == control.StepDeployB:
		return nil // the executor's first start follows phase 1's pre-flight
	case want && r == nil:
		if m.Sync.Running {
			if err := s.recordStopped(ctx, m); err != nil {
				return err
			}
		}
		s.Logger.Info("starting the sync", "migration", m.ID, "initial_copy", !m.SyncCopied(), "step", m.Step)
		r, err := s.start(m)
		if err != nil {
			return err
		}
		return s.note(ctx, m.ID, r)
	case want && r != nil:
		if err := s.followPrimary(r, m); err != nil {
			return err
		}
		return s.note(ctx, m.ID, r)
	case !want && (r != nil || m.Sync.Running && m.Sync.Node == s.NodeID):
		if r != nil {
			s.Logger.Info("stopping the sync", "migration", m.ID, "step", m.Step, "status", m.Status)
			s.stop(m.ID)
		}
		if !m.Sync.Running || m.Sync.Node != s.NodeID {
			return nil
		}
		return s.Apply(ctx, s.syncCmd(control.CmdSyncStopped, m, s.NodeID, fmt.Sprintf("not needed in %s (%s)", m.Step, m.Status)))
	case !want && m.Sync.Running:
		return s.Apply(ctx, s.syncCmd(control.CmdSyncStopped, m, m.Sync.Node, fmt.Sprintf("%s no longer leads; not needed in %s (%s)", m.Sync.Node, m.Step, m.Status)))
	}
	return nil
}

// note records in the replicated state that r runs here and, once its
// initial copy is done (the first reconcile follows it), that no later
// start may copy again.
func (s *Syncer) note(ctx context.Context, id string, r *syncRun) error {
	s.noteMu.Lock()
	defer s.noteMu.Unlock()
	m := s.State().Migrations[id]
	if m == nil {
		return nil
	}
	if m.Sync.Running && m.Sync.Node != s.NodeID {
		// Started here by phase 1's runner (a new leader's executor)
		// before the supervisor saw the old run: its stop first, so the
		// audit trail shows the gap.
		if err := s.recordStopped(ctx, m); err != nil {
			return err
		}
	}
	if !m.Sync.Running || m.Sync.Node != s.NodeID {
		c := s.syncCmd(control.CmdSyncStarted, m, s.NodeID, "")
		c.Detail = "resumed: continuous sync reconciles both sides, no copy"
		switch {
		case r.initial:
			c.Detail = "initial copy A to B, then continuous sync"
		case r.resumed != nil:
			c.Detail = fmt.Sprintf("resumed from the checkpoint %s took at %s: continuous sync reconciles both sides, no copy",
				r.resumed.Node, r.resumed.Time.Format(time.RFC3339))
		}
		if err := s.Apply(ctx, c); err != nil {
			return err
		}
	}
	if r.initial && !m.Sync.Copied && len(r.cont.DigestsEqual()) > 0 {
		if err := s.Apply(ctx, s.syncCmd(control.CmdSyncCopied, m, s.NodeID, "")); err != nil {
			return err
		}
	}
	// The last checkpoint goes into the replicated state, for the next
	// leader's replicator (a new one at most every reconcile).
	if cp := r.checkpoint.Load(); cp != nil && (m.Sync.Checkpoint == nil || m.Sync.Checkpoint.Node != s.NodeID || cp.Time.After(m.Sync.Checkpoint.Time)) {
		c := s.syncCmd(control.CmdSyncCheckpoint, m, s.NodeID, "")
		c.Checkpoint = &control.SyncCheckpoint{Zxid: cp.Zxid, Sessions: cp.Sessions, Time: cp.Time, Node: s.NodeID}
		return s.Apply(ctx, c)
	}
	return nil
}

// recordStopped raises the sync_stopped alert for the run m records and
// records its stop (sync-stopped), as this node takes the sync over.
func (s *Syncer) recordStopped(ctx context.Context, m *control.Migration) error {
	why := fmt.Sprintf("%s stopped running it (leadership moved to %s)", m.Sync.Node, s.NodeID)
	if m.Sync.Node == s.NodeID {
		why = s.NodeID + "'s replicator stopped"
	}
	// Alert first: a record whose outcome is unknown (leadership lost
	// while committing) is retried, and the alert deduplicated.
	s.notify(m, alert.Alert{Kind: "sync_stopped", Severity: alert.Critical, Migration: m.ID,
		Summary:  "sync A<->B stopped: " + why + "; restarting it on " + s.NodeID,
		DedupKey: fmt.Sprintf("sync_stopped/%s/%s/%s", m.ID, m.Sync.Node, m.Sync.Since.Format(time.RFC3339Nano))})
	return s.Apply(ctx, s.syncCmd(control.CmdSyncStopped, m, m.Sync.Node, why))
}

func (s *Syncer) notify(m *control.Migration, a alert.Alert) {
	if s.Alerts != nil {
		s.Alerts(m).Notify(a)
	}
}

func (s *Syncer) run(id string) *syncRun {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.running[id]
}

// stopAll stops every sync of this node and returns how many ran.
func (s *Syncer) stopAll() int {
	s.mu.Lock()
	ids := make([]string, 0, len(s.running))
	for id := range s.running {
		ids = append(ids, id)
	}
	s.mu.Unlock()
	for _, id := range ids {
		s.stop(id)
	}
	return len(ids)
}

// Problem says why the sync of m is not healthy, or "": by the replicated
// state (it must run and is not recorded as running on leader), and on the
// node that runs it also live: heartbeats seen crossing both ways, no
// open conflict, and digests compared and equal on every root at the last
// reconcile (a root not compared yet is not equal).
func (s *Syncer) Problem(m *control.Migration, leader string) string {
	if p := m.SyncProblem(leader); p != "" || !m.SyncRequired() {
		return p
	}
	if leader != s.NodeID {
		return "" // the leader knows the live detail
	}
	r := s.run(m.ID)
	if r == nil {
		return "sync is not running on the leader " + s.NodeID
	}
	// Strict: a run that has not yet seen a heartbeat cross each way has
	// not shown that it replicates, however young it is.
	if p := r.replicating(true); p != "" {
		return p
	}
	if n := len(r.cont.Conflicts()); n > 0 {
		return fmt.Sprintf("%d open conflict(s)", n)
	}
	eq := r.cont.DigestsEqual()
	for _, root := range r.roots {
		switch known, ok := eq[root]; {
		case !ok:
			return "digests of " + root + " not compared yet (the replicator's first reconcile has not finished)"
		case !known:
			return "digests differ on " + root + " at the last reconcile"
		}
	}
	return ""
}

// stale is how long without a heartbeat crossing a sync counts as not
// replicating.
const stale = 3 * time.Second

// replicating says whether heartbeats cross both ways, or why not. A run
// younger than stale counts as replicating unless strict (the flip's guard
// wants a heartbeat seen each way).
func (r *syncRun) replicating(strict bool) string {
	now := time.Now()
	for _, d := range []struct {
		from, to string
		at       int64
	}{{"A", "B", r.beat[0].Load()}, {"B", "A", r.beat[1].Load()}} {
		since := r.started
		if d.at != 0 {
			since = time.Unix(0, d.at)
		} else if strict {
			return fmt.Sprintf("the replicator has not replicated yet: no heartbeat from %s has reached %s since it started %v ago",
				d.from, d.to, now.Sub(r.started).Round(100*time.Millisecond))
		}
		if age := now.Sub(since); age > stale {
			return fmt.Sprintf("the replicator is not replicating: no heartbeat from %s has reached %s for %v (is %s reachable from the control leader?)",
				d.from, d.to, age.Round(100*time.Millisecond), d.to)
		}
	}
	return ""
}
