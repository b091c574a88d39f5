package server

import (
	"context"
	"fmt"
	"github.com/zk-migrate/zk-migrate/ensemble"
	"strings"
	"time"

	"github.com/zk-migrate/zk-migrate/alert"
	"github.com/zk-migrate/zk-migrate/control"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// healthRun is one migration's health checks running on this node.
type healthRun struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// healthWanted says whether a migration's ensembles are watched: from
// phase 1's start until it is done, rollbacks included (A and B both
// matter in that whole span, with or without a running sync).
func healthWanted(m *control.Migration) bool {
	return m.Step >= control.StepDeployB && m.Step < control.StepDone
}

// superviseHealth runs on the leader, from Supervise: it starts the health
// checks of every migration that wants them and stops the others.
func (s *Syncer) superviseHealth(ctx context.Context, st *control.State) {
	s.healthMu.Lock()
	defer s.healthMu.Unlock()
	if s.health == nil {
		s.health = map[string]*healthRun{}
	}
	for id, h := range s.health {
		if m := st.Migrations[id]; m == nil || !healthWanted(m) {
			h.cancel()
			<-h.done
			delete(s.health, id)
			s.Metrics.forget(id)
		}
	}
	for _, id := range st.MigrationIDs() {
		m := st.Migrations[id]
		if !healthWanted(m) || s.health[id] != nil {
			continue
		}
		cfg, err := configOf(m)
		if err != nil {
			s.Logger.Warn("health checks", "migration", id, "err", err)
			continue
		}
		hctx, cancel := context.WithCancel(ctx)
		h := &healthRun{cancel: cancel, done: make(chan struct{})}
		s.health[id] = h
		go func() { defer close(h.done); s.watchHealth(hctx, m, cfg) }()
	}
}

// stopHealth stops every health check of this node (leadership lost, or
// the supervisor ends) and drops their metrics.
func (s *Syncer) stopHealth() {
	s.healthMu.Lock()
	defer s.healthMu.Unlock()
	for id, h := range s.health {
		h.cancel()
		<-h.done
		delete(s.health, id)
		s.Metrics.forget(id)
	}
}

// watchHealth checks both ensembles now and then every
// health_check_interval_sec until ctx ends: quorum loss and unexpected
// Mesos leader changes (on the current primary) raise alerts, and every
// result goes to the metrics.
func (s *Syncer) watchHealth(ctx context.Context, m *control.Migration, cfg *control.Config) {
	t := time.NewTicker(time.Duration(cfg.Migration.HealthCheckIntervalSec) * time.Second)
	defer t.Stop()
	leaders := leaderWatch{observe: func(path, leader string, unexpected bool) {
		s.Metrics.observeMesosLeader(m.ID, path, leader, unexpected)
	}}
	notify := func(a alert.Alert) { s.notify(m, a) }
	tlsFor, _ := zkTLS(cfg) // Preflight refused a sync.tls that does not load
	var mesos *mesosWatch   // with a mesos section: task failures, task count, leader, frameworks
	if cfg.Mesos != nil {
		mesos = newMesosWatch(cfg.Mesos, s.Logger)
	}
	for {
		for _, side := range []struct{ name, connect string }{{"A", cfg.Migration.SourceZK}, {"B", cfg.Migration.TargetZK}} {
			h := CheckEnsembleTLS(side.connect, tlsFor)
			if ctx.Err() != nil {
				return
			}
			s.Metrics.observeEnsemble(m.ID, side.name, h)
			if !h.Quorum() {
				notify(alert.Alert{Kind: "quorum_loss", Severity: alert.Critical, Migration: m.ID,
					Summary:  fmt.Sprintf("ensemble %s has lost quorum: %d of %d serving", side.name, h.Serving, h.Total),
					Detail:   strings.Join(h.Problems, "\n"),
					DedupKey: "quorum_loss/" + m.ID + "/" + side.name})
			}
		}
		cur := m
		if s.Current != nil {
			if c := s.Current(m.ID); c != nil {
				cur = c
			}
		}
		primary := cfg.Migration.SourceZK
		if cur.Primary == ensemble.Target {
			primary = cfg.Migration.TargetZK
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if conn, err := zkclient.Dial(cctx, strings.Split(primary, ","), zkclient.Options{TLS: tlsFor}); err == nil {
			_ = leaders.check(cctx, conn, cur, cfg.Migration.Paths, notify)
			_ = conn.Close() // end the session, not just the connection
		}
		cancel()
		if mesos != nil {
			mctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			mesos.check(mctx, cur, notify)
			cancel()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// runningIDs lists the migrations whose sync runs on this node.
func (s *Syncer) runningIDs() map[string]bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]bool, len(s.running))
	for id := range s.running {
		out[id] = true
	}
	return out
}
