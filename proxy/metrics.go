package proxy

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/zk-migrate/zk-migrate/jute"
)

// Metrics are the proxy's Prometheus instruments. Per-opcode children are
// resolved once at construction so the request path does no label lookups.
type Metrics struct {
	requests     *prometheus.CounterVec
	errors       *prometheus.CounterVec
	duration     *prometheus.HistogramVec
	bytesIn      prometheus.Counter
	bytesOut     prometheus.Counter
	conns        prometheus.Gauge
	sessions     prometheus.Gauge
	reconnects   *prometheus.CounterVec
	expired      prometheus.Counter
	backpressure *prometheus.CounterVec
	events       prometheus.Counter
	badFrames    *prometheus.CounterVec
	fourLetters  *prometheus.CounterVec

	fourLettersRefused *prometheus.CounterVec
	connsRefused       *prometheus.CounterVec
	credsRefused       prometheus.Counter
	logsDropped        *prometheus.CounterVec

	mirrorBacklog  prometheus.Gauge
	mirrorLag      prometheus.Gauge
	mirrorFailures *prometheus.CounterVec
	mirrored       prometheus.Counter
	mirrorDelay    prometheus.Observer
	mirrorReattach prometheus.Counter
	fenced         *prometheus.CounterVec
	flipFaults     *prometheus.CounterVec

	byOp map[jute.Op]*opMetrics
	// unknown serves opcodes outside ZooKeeper 3.4-3.8.
	unknown *opMetrics
}

type opMetrics struct {
	requests prometheus.Counter
	duration prometheus.Observer
}

// NewMetrics creates the instruments and registers them with reg (for
// example prometheus.NewRegistry()); reg may be nil to keep them private.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	const ns, sub = "zkmigrate", "proxy"
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "requests_total", Help: "Client requests received, by ZooKeeper opcode."}, []string{"op"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "request_errors_total", Help: "Replies carrying a ZooKeeper error, by opcode and error code name."}, []string{"op", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub,
			Name: "request_duration_seconds", Help: "Time from a request's arrival at the proxy to its reply leaving it, by opcode.",
			Buckets: []float64{50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1, 5}}, []string{"op"}),
		bytesIn: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "client_received_bytes_total", Help: "Bytes received from clients."}),
		bytesOut: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "client_sent_bytes_total", Help: "Bytes sent to clients."}),
		conns: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "client_connections", Help: "Open client connections."}),
		sessions: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "sessions", Help: "Client sessions established through the proxy."}),
		reconnects: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "upstream_reconnects_total", Help: "Upstream server losses handled, by result: ok (moved, invisible to the client), client_reconnect (a write was in flight: the client reconnects), expired, failed, close_retried (the session's closeSession was lost with its server: closed again from another server)."}, []string{"result"}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "sessions_expired_total", Help: "Sessions the proxy closed upstream because nothing was heard from the client (connected or not) for the session timeout, as ZooKeeper expires them."}),
		backpressure: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "backpressure_waits_total", Help: "Times a session stopped reading, by side (upstream: the server's replies; client: the client's requests) and reason (client_backlog: replies the client has not read reached --max-client-backlog; max_pending: requests in flight reached --max-pending)."}, []string{"side", "reason"}),
		events: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "watch_events_total", Help: "Watch notifications relayed to clients."}),
		badFrames: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "bad_frames_total", Help: "Client frames rejected, by reason (too_large, malformed, unknown_opcode)."}, []string{"reason"}),
		fourLetters: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "four_letter_words_total", Help: "Four-letter admin commands answered, by word."}, []string{"word"}),
		fourLettersRefused: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "four_letter_words_refused_total", Help: "Four-letter admin commands refused because --four-letter-words does not allow them, by word."}, []string{"word"}),
		connsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "client_connections_refused_total", Help: "Client connections closed by a limit, by reason: max_connections, max_connections_per_ip, handshake_timeout (no ConnectRequest or TLS handshake within --handshake-timeout), plaintext_on_tls (a plaintext client on the TLS port), tls_handshake (a failed TLS handshake)."}, []string{"reason"}),
		credsRefused: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "credentials_refused_total", Help: "addAuth requests answered AUTHFAILED because the session already holds --max-credentials distinct credentials."}),
		logsDropped: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "log_lines_dropped_total", Help: "Log lines dropped by the per-session, per-reason rate limit, by reason."}, []string{"reason"}),
		mirrorBacklog: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "mirror_backlog", Help: "Znode paths written on the primary and not yet mirrored to the secondary (two-ensemble mode), over all sessions; bounded by --max-mirror-backlog."}),
		mirrorLag: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "mirror_lag_seconds", Help: "Age of the oldest write not yet mirrored to the secondary (0: the secondary is the primary's state)."}),
		mirrorFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "mirror_failures_total", Help: "Writes the proxy could not mirror to the secondary and left to the replicator, by reason: backlog_full, noauth, noauth_acl_applied (the writer cannot read the primary back; the ACL it requested was applied to the secondary), noauth_acl_open (that ACL could not be applied: the secondary may be more permissive than the primary, act now), acl_hidden, not_converged, session_ended, shadow_expired (the secondary expired a shadow session; its ephemerals are re-created), fenced (the secondary's fence refused the mirror's write: this proxy missed a flip; no longer counted: see stranded), stranded (such a write, kept and repaired onto the new primary once the proxy has caught up), flip_conflict (a stranded write whose znode the new primary's clients changed after the flip: their state is kept, alert on it), flip_ambiguous (a stranded write the proxy cannot judge: ephemeral, ACL, or more than one flip since; left on both ensembles for the operator), shadow_close_retried (closing a shadow session on the secondary failed: retried until the secondary answers, so its ephemerals do not outlive the client's session there), session_unmarked (an upstream session's marker could not be created on its ensemble: a replicator may take its ephemerals for a bypassing client's; look at the WARN), error."}, []string{"reason"}),
		mirrored: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "mirrored_paths_total", Help: "Znode paths whose state was mirrored to the secondary and verified equal."}),
		mirrorReattach: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "shadow_reattaches_total", Help: "Shadow sessions resumed on another server of the secondary after losing theirs."}),
		fenced: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "fenced_total", Help: "Fencing events (two-ensemble mode, SPEC.md 4.10), by what: write (a client write refused by the old primary's fence: the client's connection was closed), mirror (a mirror write refused by the secondary's fence: the path is left to the replicator), read (a request refused because the read lease could not be renewed), stale_epoch (the proxy found it had missed a flip and moved its sessions), hold_expired (a flip hold ended without a swap within its budget), self_hold (the proxy held itself for a barrier announced on its primary that had not held it: restarted inside it, or not listed)."}, []string{"what"}),
		flipFaults: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "flip_session_faults_total", Help: "Sessions a flip could not simply move (SPEC.md 4.10), by what: not_moved_deadline (not moved within the pause budget: the client was told to reconnect and re-opens its session on the new primary), not_moved_error (likewise, after an error), shadow_reopened (the new primary had expired the shadow session: a new session was opened there and the client's ephemerals created again), ephemeral_not_moved (one of those ephemerals could not be created again: look at the WARN naming it), converged (a path shown to clients existed on one ensemble only at a barrier's swap: a write no live proxy mirrored; the new primary was made like the old)."}, []string{"what"}),
		byOp: map[jute.Op]*opMetrics{},
	}
	mirrorDelay := prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub,
		Name: "mirror_delay_seconds", Help: "Time from a write's acknowledgement by the primary to its state verified on the secondary.",
		Buckets: []float64{1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1, 5, 30}})
	m.mirrorDelay = mirrorDelay
	if reg != nil {
		reg.MustRegister(m.requests, m.errors, m.duration, m.bytesIn, m.bytesOut, m.conns, m.sessions,
			m.reconnects, m.expired, m.backpressure, m.events, m.badFrames, m.fourLetters,
			m.fourLettersRefused, m.connsRefused, m.credsRefused, m.logsDropped,
			m.mirrorBacklog, m.mirrorLag, m.mirrorFailures, m.mirrored, mirrorDelay, m.mirrorReattach, m.fenced, m.flipFaults)
	}
	for _, op := range jute.AllOps() {
		m.byOp[op] = &opMetrics{requests: m.requests.WithLabelValues(op.String()), duration: m.duration.WithLabelValues(op.String())}
	}
	m.unknown = &opMetrics{requests: m.requests.WithLabelValues("unknown"), duration: m.duration.WithLabelValues("unknown")}
	for _, r := range []string{"ok", "client_reconnect", "expired", "failed", "close_retried"} {
		m.reconnects.WithLabelValues(r)
	}
	for _, r := range []string{"backlog_full", "noauth", "noauth_acl_applied", "noauth_acl_open", "acl_hidden", "not_converged", "session_ended", "shadow_expired", "fenced", "stranded", "flip_conflict", "flip_ambiguous", "session_unmarked", "error"} {
		m.mirrorFailures.WithLabelValues(r)
	}
	for _, r := range []string{"not_moved_deadline", "not_moved_error", "shadow_reopened", "ephemeral_not_moved"} {
		m.flipFaults.WithLabelValues(r)
	}
	for _, r := range []string{"write", "mirror", "read", "stale_epoch", "hold_expired"} {
		m.fenced.WithLabelValues(r)
	}
	for _, r := range []string{"max_connections", "max_connections_per_ip", "handshake_timeout", "plaintext_on_tls", "tls_handshake"} {
		m.connsRefused.WithLabelValues(r)
	}
	return m
}

func (m *Metrics) op(op jute.Op) *opMetrics {
	if o, ok := m.byOp[op]; ok {
		return o
	}
	return m.unknown
}

func (m *Metrics) observeReply(op jute.Op, code jute.Code, start time.Time) {
	m.op(op).duration.Observe(time.Since(start).Seconds())
	if code != jute.CodeOK {
		m.errors.WithLabelValues(op.String(), code.String()).Inc()
	}
}
