package replicator

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the replicator's Prometheus instruments.
type Metrics struct {
	lag       *prometheus.HistogramVec
	inSync    *prometheus.GaugeVec
	applied   *prometheus.CounterVec
	conflicts *prometheus.CounterVec
	// unreadable counts znodes whose ACL ZooKeeper hides from the replicator.
	unreadable prometheus.Gauge
	// Snapshot progress, updated by the sync command from Progress.
	SnapshotNodes   prometheus.Gauge
	SnapshotWritten prometheus.Gauge
}

// NewMetrics creates the instruments and registers them with reg (nil:
// unregistered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	const ns, sub = "zkmigrate", "replicator"
	m := &Metrics{
		lag: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "lag_seconds",
			Help:    "Time from a heartbeat written on one ensemble to its copy on the other, by direction (A->B, B->A).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10}}, []string{"direction"}),
		applied: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "applied_total",
			Help: "Changes copied by continuous sync, by direction."}, []string{"direction"}),
		conflicts: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "conflicts_total",
			Help: "Znodes changed on both sides since their last sync, by strategy."}, []string{"strategy"}),
		inSync: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "digest_equal",
			Help: "1 when the last full reconcile found equal digests on both ensembles, by root; 0 otherwise."}, []string{"root"}),
		unreadable: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "unreadable_acls",
			Help: "Znodes whose digest ACL ZooKeeper hides from the replicator (no ADMIN permission): not copied, not verified."}),
		SnapshotNodes: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "snapshot_source_nodes",
			Help: "Source znodes read by the snapshot copy so far."}),
		SnapshotWritten: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "snapshot_written_ops",
			Help: "Writes applied to the target by the snapshot copy so far."}),
	}
	if reg != nil {
		reg.MustRegister(m.lag, m.inSync, m.applied, m.conflicts, m.unreadable, m.SnapshotNodes, m.SnapshotWritten)
	}
	return m
}
