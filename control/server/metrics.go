package server

import (
	"context"
	"github.com/zk-migrate/zk-migrate/ensemble"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/zk-migrate/zk-migrate/control"
	"github.com/zk-migrate/zk-migrate/raftstore"
)

// RaftView is what the metrics read of this node's Raft store
// (raftstore.Node).
type RaftView interface {
	IsLeader() bool
	Leader() (addr, id string)
	Servers() ([]raftstore.Server, error)
	Stats() raftstore.ServerStats
	State() *control.State
	LeaderChanges() uint64
}

var _ RaftView = (*raftstore.Node)(nil)

// ProxyView is what the metrics read of the proxies in the gossip pool
// (membership.Fleet).
type ProxyView interface {
	Live(ctx context.Context) ([]string, error)
	Stale(epoch int64) []string
}

// Metrics are the control node's Prometheus metrics (zkmigrate_control_*).
// Raft and migration state are read at scrape time from the node's
// applied state, so every node, leader or not, exports them; the ensemble
// health and Mesos leader series come from the health checks, which run
// on the leader only, and vanish when they stop there. A nil *Metrics
// records nothing.
type Metrics struct {
	raft    RaftView
	syncer  *Syncer
	proxies atomic.Pointer[proxyHolder]

	mesosUnexpected *prometheus.CounterVec

	mu      sync.Mutex
	health  map[string]map[string]EnsembleHealth // migration -> side (A, B)
	leaders map[string]map[string]int64          // migration -> path -> sequence
}

type proxyHolder struct{ v ProxyView }

// NewMetrics registers the control node's metrics with reg. sy (may be
// nil) tells which syncs run on this node.
func NewMetrics(reg prometheus.Registerer, raft RaftView, sy *Syncer) *Metrics {
	m := &Metrics{raft: raft, syncer: sy,
		mesosUnexpected: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "zkmigrate", Subsystem: "control",
			Name: "mesos_unexpected_leader_changes_total",
			Help: "Mesos leader changes (the lowest json.info_ under a path, on the primary ensemble) outside phases 2 and 3, seen by the health checks on the leader."},
			[]string{"migration", "path"}),
		health: map[string]map[string]EnsembleHealth{}, leaders: map[string]map[string]int64{}}
	reg.MustRegister(m, m.mesosUnexpected)
	return m
}

// SetProxies gives the metrics the gossip pool's proxies (once joined).
func (m *Metrics) SetProxies(p ProxyView) {
	if m != nil {
		m.proxies.Store(&proxyHolder{p})
	}
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("zkmigrate_control_"+name, help, labels, nil)
}

var (
	dIsLeader      = desc("raft_is_leader", "1 if this node is the Raft leader.")
	dHasLeader     = desc("raft_has_leader", "1 if this node knows a Raft leader (itself or another).")
	dLeaderChanges = desc("raft_leader_changes_total", "New Raft leaders this node has seen take over since it started.")
	dLastContact   = desc("raft_last_contact_seconds", "Seconds since this node last heard from the leader: 0 on the leader, -1 if never.")
	dApplied       = desc("raft_applied_index", "Last Raft log index applied to this node's state.")
	dTerm          = desc("raft_term", "Current Raft term.")
	dVoters        = desc("raft_voters", "Voters in the Raft configuration (non-voters catching up excluded).")
	dMigrations    = desc("migrations", "Migrations in the replicated state.")
	dStep          = desc("migration_step", "The migration's step in order: 0 not started, 1 phase 1, 2 the flip, 3-7 phases 2-6, 8 done; label step names it.", "migration", "step")
	dPhase         = desc("migration_phase", "The migration's phase, 0 to 6 (the flip counts as phase 1).", "migration")
	dStatus        = desc("migration_status", "1 for the migration's current status (pending, awaiting-approval, running, succeeded, failed, rolling-back, completed), 0 for the others; label step is the current step.", "migration", "step", "status")
	dEpoch         = desc("migration_epoch", "Highest flip epoch the migration has begun.", "migration")
	dPrimaryB      = desc("migration_primary_b", "1 once ensemble B is the primary the proxies must use, 0 while A is.", "migration")
	dPaused        = desc("migration_paused", "1 if the migration is paused.", "migration")
	dAwaiting      = desc("migration_awaiting_approval", "1 if the current step waits for an operator's approval.", "migration")
	dSyncRunning   = desc("migration_sync_running", "1 if this node runs the migration's sync (replicator A<->B).", "migration")
	dFlipOpen      = desc("migration_flip_barrier_open", "1 while a flip barrier is open (begun, not every live proxy acknowledged or fenced).", "migration")
	dServers       = desc("ensemble_servers", "Servers in the ensemble's connect string (health checks on the leader).", "migration", "side")
	dServing       = desc("ensemble_servers_serving", "Servers answering srvr with a mode at the last health check (on the leader).", "migration", "side")
	dQuorum        = desc("ensemble_quorum", "1 if a majority of the ensemble's servers served at the last health check (on the leader).", "migration", "side")
	dMesosLeader   = desc("mesos_leader_sequence", "Sequence number of the leading Mesos master's json.info_ node under path, on the primary ensemble (health checks on the leader).", "migration", "path")
	dProxiesLive   = desc("proxies_live", "Proxies in the gossip pool (only with --gossip-addr).")
	dProxiesStale  = desc("proxies_stale_epoch", "Live proxies advertising a flip epoch below the migration's (only with --gossip-addr).", "migration")
)

var statuses = []control.Status{control.StatusPending, control.StatusAwaitingApproval, control.StatusRunning,
	control.StatusSucceeded, control.StatusFailed, control.StatusRollingBack, control.StatusCompleted}

// Describe sends the descriptions of the scrape-time metrics.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{dIsLeader, dHasLeader, dLeaderChanges, dLastContact, dApplied, dTerm, dVoters,
		dMigrations, dStep, dPhase, dStatus, dEpoch, dPrimaryB, dPaused, dAwaiting, dSyncRunning, dFlipOpen,
		dServers, dServing, dQuorum, dMesosLeader, dProxiesLive, dProxiesStale} {
		ch <- d
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Collect reads the node's state now.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	st := m.raft.Stats()
	_, leader := m.raft.Leader()
	gauge(dIsLeader, b2f(m.raft.IsLeader()))
	gauge(dHasLeader, b2f(leader != ""))
	ch <- prometheus.MustNewConstMetric(dLeaderChanges, prometheus.CounterValue, float64(m.raft.LeaderChanges()))
	contact := st.LastContact.Seconds()
	if st.LastContact < 0 {
		contact = -1
	}
	gauge(dLastContact, contact)
	gauge(dApplied, float64(st.AppliedIndex))
	gauge(dTerm, float64(st.Term))
	if servers, err := m.raft.Servers(); err == nil {
		n := 0
		for _, s := range servers {
			if s.Voter {
				n++
			}
		}
		gauge(dVoters, float64(n))
	}

	state := m.raft.State()
	gauge(dMigrations, float64(len(state.Migrations)))
	var running map[string]bool
	if m.syncer != nil {
		running = m.syncer.runningIDs()
	}
	var proxies ProxyView
	if h := m.proxies.Load(); h != nil {
		proxies = h.v
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		live, _ := proxies.Live(ctx)
		cancel()
		gauge(dProxiesLive, float64(len(live)))
	}
	for _, id := range state.MigrationIDs() {
		mg := state.Migrations[id]
		step := mg.Step.String()
		gauge(dStep, float64(mg.Step), id, step)
		gauge(dPhase, float64(mg.Step.Phase()), id)
		for _, s := range statuses {
			gauge(dStatus, b2f(mg.Status == s), id, step, string(s))
		}
		gauge(dEpoch, float64(mg.Epoch), id)
		gauge(dPrimaryB, b2f(mg.Primary == ensemble.Target), id)
		gauge(dPaused, b2f(mg.Paused), id)
		gauge(dAwaiting, b2f(mg.Status == control.StatusAwaitingApproval), id)
		gauge(dSyncRunning, b2f(running[id]), id)
		gauge(dFlipOpen, b2f(mg.Flip != nil && !mg.Flip.Done), id)
		if proxies != nil {
			gauge(dProxiesStale, float64(len(proxies.Stale(mg.Epoch))), id)
		}
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	for id, sides := range m.health {
		for side, h := range sides {
			gauge(dServers, float64(h.Total), id, side)
			gauge(dServing, float64(h.Serving), id, side)
			gauge(dQuorum, b2f(h.Quorum()), id, side)
		}
	}
	for id, paths := range m.leaders {
		for path, seq := range paths {
			gauge(dMesosLeader, float64(seq), id, path)
		}
	}
}

// observeEnsemble records a health check of one side of a migration.
func (m *Metrics) observeEnsemble(migration, side string, h EnsembleHealth) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.health[migration] == nil {
		m.health[migration] = map[string]EnsembleHealth{}
	}
	m.health[migration][side] = h
}

// observeMesosLeader records the leading master's json.info_ node under
// path, and counts a change that phases 2 and 3 do not explain.
func (m *Metrics) observeMesosLeader(migration, path, node string, unexpectedChange bool) {
	if m == nil {
		return
	}
	c := m.mesosUnexpected.WithLabelValues(migration, path) // 0 from the first check, so increase() sees the first change
	if unexpectedChange {
		c.Inc()
	}
	seq, err := strconv.ParseInt(strings.TrimPrefix(node, "json.info_"), 10, 64)
	if err != nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.leaders[migration] == nil {
		m.leaders[migration] = map[string]int64{}
	}
	m.leaders[migration][path] = seq
}

// forget drops a migration's health series: its health checks stopped
// here (leadership moved, the migration ended), so they are no longer
// current.
func (m *Metrics) forget(migration string) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.health, migration)
	delete(m.leaders, migration)
}
