package server

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zk-migrate/zk-migrate/alert"
	"github.com/zk-migrate/zk-migrate/control"
	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/replicator"
)

// configOf decodes the full migration.yaml stored with the migration.
func configOf(m *control.Migration) (*control.Config, error) {
	var c control.Config
	if err := json.Unmarshal(m.Config.Raw, &c); err != nil {
		return nil, fmt.Errorf("migration %s has no usable configuration: %w", m.ID, err)
	}
	return &c, nil
}

// Syncer runs the replicator (continuous sync of A and B) on the leader.
// Phase 1's runner starts it after the pre-flight and verifies equal
// digests and no open conflicts; Supervise then keeps it running on
// whichever node leads, from phase 1 until phase 6 stops it; FlipReady is
// the flip's guard.
type Syncer struct {
	IsLeader func() bool
	Logger   *slog.Logger
	// NodeID is this control node's id; Apply proposes a command to the
	// replicated state (the leader's raftstore.Node.Apply); State returns
	// the applied state.
	NodeID string
	Apply  func(ctx context.Context, c control.Command) error
	State  func() *control.State
	// Barrier, if set, waits until this node has applied every committed
	// command (raftstore.Node.Barrier); a new leader calls it before it
	// acts on the state.
	Barrier func(timeout time.Duration) error
	// Alerts, if set, returns the migration's alert dispatcher.
	Alerts func(m *control.Migration) *alert.Dispatcher
	// Current, if set, returns the migration's current state (the health
	// loop follows the primary and the phase).
	Current func(id string) *control.Migration
	// Record, if set, writes an entry to the replicated audit trail
	// (conflicts and alerts of the sync).
	Record func(m *control.Migration, event, detail string)
	// VerifyTimeout bounds the wait for equal digests (default 2 min);
	// SuperviseEvery is the supervisor's period (500 ms).
	VerifyTimeout, SuperviseEvery time.Duration
	// Metrics, if set, receives the health checks' results.
	Metrics *Metrics

	mu      sync.Mutex
	running map[string]*syncRun
	noteMu  sync.Mutex // one note at a time
	// health holds the health checks running here (on the leader).
	healthMu sync.Mutex
	health   map[string]*healthRun
	// fenced holds, per migration, the epoch and primary of the last
	// fences this node raised (Fence). From that raise on they are the
	// proxies' primary, before the replicated state says so: a reverse
	// flip is recorded only by rolled-back, once its proxies swapped and
	// were released. primaryMu orders every SetPrimary with it.
	primaryMu sync.Mutex
	fenced    map[string]fencedAt
}

// fencedAt is a primary the fences name from an epoch on.
type fencedAt struct {
	epoch   int64
	primary ensemble.Name
}

type syncRun struct {
	cont    *replicator.Continuous
	cancel  context.CancelFunc
	done    chan struct{}
	roots   []string
	cfg     *control.Config
	initial bool // this run began with the initial copy A to B
	started time.Time
	// beat holds when a heartbeat written on A (0) or B (1) last reached
	// the other side (unix nanoseconds).
	beat [2]atomic.Int64
	// checkpoint is the replicator's last checkpoint, recorded in the
	// replicated state by the supervisor (note).
	checkpoint atomic.Pointer[replicator.Checkpoint]
	// resumed is the checkpoint the run started from (nil: none).
	resumed *control.SyncCheckpoint
}

// primaryOf is the proxies' primary for m: the migration's recorded
// one, the committed flip's while it runs, or the one of fences this node
// raised at m's epoch or later (a reverse flip in progress, or a state
// read before the flip's commit). Called with primaryMu held.
func (s *Syncer) primaryOf(m *control.Migration) ensemble.Name {
	primary := m.Primary
	if f := m.Flip; f != nil && f.Committed && !f.Done {
		primary = f.Primary // the proxies swap to it (Syncer.Fence)
	}
	if f, ok := s.fenced[m.ID]; ok && f.epoch >= m.Epoch {
		primary = f.primary
	}
	return primary
}

// followPrimary keeps the replicator's idea of the proxies' primary the
// migration's (primaryOf): it changes at the flip (and back at a
// rollback across it), while the sync goes on. The supervisor calls it
// with the state it read at its tick, which may predate the fences a flip
// raised since: those win (with the recorded primary instead, the
// replicator copied the old primary's late state, the proxies' mirror
// writes, over the clients' writes on the new one until rolled-back was
// recorded: the demo's register history showed versions no client wrote).
func (s *Syncer) followPrimary(r *syncRun, m *control.Migration) error {
	s.primaryMu.Lock()
	defer s.primaryMu.Unlock()
	if err := r.cont.SetPrimary(s.primaryOf(m)); err != nil {
		return fmt.Errorf("migration %s: %w", m.ID, err)
	}
	return nil
}

// fencedPrimary records that this node raised a fence of m to epoch and
// primary, and gives the replicator that primary.
func (s *Syncer) fencedPrimary(m *control.Migration, epoch int64, primary ensemble.Name) error {
	r := s.run(m.ID) // before primaryMu: start holds s.mu while it takes primaryMu
	s.primaryMu.Lock()
	defer s.primaryMu.Unlock()
	if f, ok := s.fenced[m.ID]; !ok || epoch >= f.epoch {
		if s.fenced == nil {
			s.fenced = map[string]fencedAt{}
		}
		s.fenced[m.ID] = fencedAt{epoch: epoch, primary: primary}
	}
	if r != nil {
		return r.cont.SetPrimary(s.primaryOf(m))
	}
	return nil
}

// startPrimary is primaryOf for a replicator being started.
func (s *Syncer) startPrimary(m *control.Migration) ensemble.Name {
	s.primaryMu.Lock()
	defer s.primaryMu.Unlock()
	return s.primaryOf(m)
}

// start starts the migration's sync unless it runs. The initial copy A to
// B runs only if the replicated state says it never completed.
func (s *Syncer) start(m *control.Migration) (*syncRun, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running == nil {
		s.running = map[string]*syncRun{}
	}
	if r := s.running[m.ID]; r != nil {
		return r, nil
	}
	cfg, err := configOf(m)
	if err != nil {
		return nil, err
	}
	r := &syncRun{roots: cfg.Migration.Paths, cfg: cfg, initial: !m.SyncCopied(), started: time.Now(), done: make(chan struct{})}
	var resume *replicator.Checkpoint
	if cp := m.Sync.Checkpoint; cp != nil && !r.initial {
		r.resumed = cp
		resume = &replicator.Checkpoint{Zxid: cp.Zxid, Sessions: cp.Sessions, Time: cp.Time}
	}
	cont, err := replicator.NewContinuous(replicator.ContinuousConfig{
		Checkpoint:   resume,
		OnCheckpoint: func(cp replicator.Checkpoint) { r.checkpoint.Store(&cp) },
		Dial:         dialer(cfg).Dial,
		OnAlert: func(a replicator.Alert) {
			if s.Alerts != nil {
				sev := alert.Warning
				if a.Kind == "sync_failure" || a.Kind == "acl_unreadable" {
					sev = alert.Error
				}
				s.Alerts(m).Notify(alert.Alert{Kind: a.Kind, Severity: sev, Summary: a.Message, Migration: m.ID})
			}
		},
		OnLag: func(from replicator.Side, _ time.Duration) { r.beat[from].Store(time.Now().UnixNano()) },
		OnEvent: func(e replicator.Event) {
			if s.Record != nil {
				line, _ := json.Marshal(e)
				s.Record(m, e.Kind, string(line))
			}
		},
		// The proxies dual-write to the migration's primary's other side
		// in phase 1: their mirror's writes are theirs (SPEC 4c).
		Primary: s.startPrimary(m),
		Roots:   cfg.Migration.Paths, Strategy: cfg.Sync.ConflictStrategy, InitialSync: r.initial, Logger: s.Logger,
		LagThreshold: time.Duration(cfg.Sync.LagThresholdMS) * time.Millisecond, ReconcileEvery: 5 * time.Second,
	})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cont, r.cancel = cont, cancel
	s.running[m.ID] = r
	go func() {
		defer close(r.done)
		_ = cont.Run(ctx)
	}()
	return r, nil
}

func (s *Syncer) stop(id string) {
	s.mu.Lock()
	r := s.running[id]
	delete(s.running, id)
	s.mu.Unlock()
	if r != nil {
		r.cancel()
		<-r.done
	}
}

// Status reports each running sync: lag, digests, conflicts.
func (s *Syncer) Status() any {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]any{}
	for id, r := range s.running {
		ab, ba := r.cont.Lag()
		st := map[string]any{"running": true, "node": s.NodeID, "since": r.started.UTC(), "initial_copy": r.initial,
			"lag_a_to_b_ms": ab.Milliseconds(), "lag_b_to_a_ms": ba.Milliseconds(),
			"digests_equal": r.cont.DigestsEqual(), "open_conflicts": r.cont.Conflicts()}
		if p := r.replicating(false); p != "" {
			st["problem"] = p
		}
		if cp := r.cont.LastCheckpoint(); cp != nil {
			st["checkpoint"] = cp.Time
		}
		if r.resumed != nil {
			st["resumed_from_checkpoint"] = r.resumed.Time
		}
		out[id] = st
	}
	return out
}

// Run checks the ensembles (pre-flight) and starts the sync (idempotent);
// Supervise records the start and keeps it running.
func (s *Syncer) Run(_ context.Context, m *control.Migration) error {
	cfg, err := configOf(m)
	if err != nil {
		return err
	}
	notes, err := Preflight(cfg)
	if err != nil {
		return err
	}
	for _, n := range notes {
		s.Logger.Warn("pre-flight", "migration", m.ID, "note", n)
	}
	_, err = s.start(m)
	return err
}

// Verify waits for equal digests on every root, no open conflicts and a
// heartbeat seen crossing each way (so phase 1 succeeds only once the
// health check, Syncer.Problem, would call it healthy).
func (s *Syncer) Verify(ctx context.Context, m *control.Migration) error {
	r, err := s.start(m)
	if err != nil {
		return err
	}
	timeout := s.VerifyTimeout
	if timeout == 0 {
		timeout = 2 * time.Minute
	}
	deadline := time.Now().Add(timeout)
	for {
		if cur := s.run(m.ID); cur != r {
			// Stopped meanwhile (leadership lost and regained under load:
			// the supervisor leaves phase 1's first start to this runner
			// until it is recorded): start it again rather than wait on a
			// stopped replicator until the timeout; not on a node that no
			// longer leads (the new leader runs its own).
			if s.IsLeader != nil && !s.IsLeader() {
				return fmt.Errorf("phase 1's sync was stopped here: %s no longer leads the control plane", s.NodeID)
			}
			if r, err = s.start(m); err != nil {
				return err
			}
		}
		if hidden := r.cont.Unreadable(); len(hidden) > 0 { // never equal: fail now, with the fix
			return fmt.Errorf("phase 1 cannot succeed: %s", replicator.DescribeUnreadable(hidden, 20))
		}
		eq := r.cont.DigestsEqual()
		all := len(eq) > 0 && r.replicating(true) == "" // and a heartbeat seen each way: healthy once verified
		for _, root := range r.roots {
			all = all && eq[root]
		}
		if all && len(r.cont.Conflicts()) == 0 {
			// Recorded before the step can succeed: a new leader resumes
			// without a copy.
			return s.note(ctx, m.ID, r)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("ensembles not verified equal after %v (digests %v, %d open conflicts)", timeout, eq, len(r.cont.Conflicts()))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Undo stops the sync (rollback below phase 1).
func (s *Syncer) Undo(_ context.Context, m *control.Migration) error {
	s.stop(m.ID)
	return nil
}

// Script runs a phase's shell commands from migration.yaml's actions. A
// phase without actions has nothing to automate: the operator does it and
// the step succeeds as soon as it is approved.
type Script struct {
	Name string // the key in actions
	// After, if set, runs after the script (phase 6 stops the sync).
	After func(ctx context.Context, m *control.Migration)
}

func (s Script) sh(ctx context.Context, m *control.Migration, which string, cmd string) error {
	if cmd == "" {
		return nil
	}
	c := exec.CommandContext(ctx, "/bin/sh", "-c", cmd)
	c.Env = append(c.Environ(), "ZKM_MIGRATION="+m.ID, "ZKM_PHASE="+m.Step.String())
	out, err := c.CombinedOutput()
	if err != nil {
		return fmt.Errorf("actions.%s.%s failed: %w: %s", s.Name, which, err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (s Script) action(m *control.Migration) (control.Action, error) {
	cfg, err := configOf(m)
	if err != nil {
		return control.Action{}, err
	}
	return cfg.Actions[s.Name], nil
}

// Run runs actions.NAME.run.
func (s Script) Run(ctx context.Context, m *control.Migration) error {
	a, err := s.action(m)
	if err != nil {
		return err
	}
	if err := s.sh(ctx, m, "run", a.Run); err != nil {
		return err
	}
	if s.After != nil {
		s.After(ctx, m)
	}
	return nil
}

// Verify runs actions.NAME.verify.
func (s Script) Verify(ctx context.Context, m *control.Migration) error {
	a, err := s.action(m)
	if err != nil {
		return err
	}
	return s.sh(ctx, m, "verify", a.Verify)
}

// Undo runs actions.NAME.undo.
func (s Script) Undo(ctx context.Context, m *control.Migration) error {
	a, err := s.action(m)
	if err != nil {
		return err
	}
	return s.sh(ctx, m, "undo", a.Undo)
}

// NoProxies is the proxy fleet until proxies take part in flips (the
// dual-write issue): the barrier has no one to wait for.
type NoProxies struct{}

// Live lists no proxies.
func (NoProxies) Live(context.Context) ([]string, error) { return nil, nil }

// Flip has no one to ask.
func (NoProxies) Flip(context.Context, string, int64, ensemble.Name, []string) ([]string, error) {
	return nil, nil
}

// Steps returns the step runners of a control node: phase 1 the sync;
// phases 2 to 6 the Mesos phases (MesosPhase), which run migration.yaml's
// actions when it has no mesos section. Phase 6 also stops the sync.
func Steps(sy *Syncer) map[control.Step]control.StepRunner {
	steps := map[control.Step]control.StepRunner{control.StepDeployB: sy}
	stop := func(m *control.Migration) { sy.stop(m.ID) }
	for name, st := range control.ActionNames {
		s := Script{Name: name}
		if st == control.StepRemoveA {
			s.After = func(_ context.Context, m *control.Migration) { stop(m) }
		}
		steps[st] = &MesosPhase{Step: st, Script: s, Logger: sy.Logger, StopSync: stop}
	}
	return steps
}

// AlertHub keeps one alert dispatcher per migration, built from its
// migration.yaml, running until ctx ends.
type AlertHub struct {
	Ctx    context.Context
	Logger *slog.Logger

	mu   sync.Mutex
	byID map[string]*alert.Dispatcher
}

// For returns the migration's dispatcher (one with no sinks if it has no
// alerts configured).
func (h *AlertHub) For(m *control.Migration) *alert.Dispatcher {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.byID == nil {
		h.byID = map[string]*alert.Dispatcher{}
	}
	if d := h.byID[m.ID]; d != nil {
		return d
	}
	var sinks []alert.Sink
	if cfg, err := configOf(m); err == nil {
		sinks = Sinks(cfg.Alerts)
	}
	d := alert.NewDispatcher(alert.Config{Sinks: sinks, Logger: h.Logger})
	go d.Run(h.Ctx)
	h.byID[m.ID] = d
	return d
}

// Sinks builds the alert destinations of a migration.yaml.
func Sinks(a control.Alerts) []alert.Sink {
	var sinks []alert.Sink
	if a.SlackWebhook != "" {
		sinks = append(sinks, &alert.Webhook{URL: a.SlackWebhook})
	}
	if a.PagerDutyRoutingKey != "" {
		sinks = append(sinks, &alert.PagerDuty{RoutingKey: a.PagerDutyRoutingKey, URL: a.PagerDutyURL})
	}
	if a.SMTP.Addr != "" {
		sinks = append(sinks, &alert.Email{Addr: a.SMTP.Addr, From: a.SMTP.From, To: a.SMTP.To})
	}
	return sinks
}
