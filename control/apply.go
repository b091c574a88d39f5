package control

import (
	"fmt"
	"github.com/zk-migrate/zk-migrate/ensemble"
	"slices"
	"strings"
	"time"
)

// Kind names a command.
type Kind string

// Commands. Operators issue create, start, approve, advance, pause, resume
// and rollback; the executor (on the leader) reports step results and runs
// the flip barrier.
const (
	CmdCreate        Kind = "create"
	CmdStart         Kind = "start"          // begin phase 1
	CmdApprove       Kind = "approve"        // let the awaiting step run
	CmdAdvance       Kind = "advance"        // move to the next step (Step must be it)
	CmdPause         Kind = "pause"          // the executor stops between actions
	CmdResume        Kind = "resume"         //
	CmdRollback      Kind = "rollback"       // undo steps down to Step
	CmdRetry         Kind = "retry"          // run a failed step again
	CmdStepRunning   Kind = "step-running"   // executor: started the current step
	CmdStepSucceeded Kind = "step-succeeded" // executor: success criteria held
	CmdStepFailed    Kind = "step-failed"    // executor: the step failed (Error)
	CmdRolledBack    Kind = "rolled-back"    // executor: undone down to RollbackTo
	CmdStepUndone    Kind = "step-undone"    // executor: the rollback's undo of Step is done (Epoch: the reverse flip's)
	CmdFlipBegin     Kind = "flip-begin"     // executor: new epoch; Proxies expected to ack
	CmdFlipAck       Kind = "flip-ack"       // a proxy drained and holds Epoch
	CmdFlipFence     Kind = "flip-fence"     // a proxy that did not ack is fenced
	CmdFlipDone      Kind = "flip-done"      // every expected proxy acked or was fenced
	CmdFlipCommit    Kind = "flip-commit"    // executor: every proxy held, the guard held; the fences are raised next (no abort after)
	CmdNodeJoin      Kind = "node-join"      // a control-plane node and its API address
	CmdNodeRemove    Kind = "node-remove"    // a control-plane node left the Raft configuration
	CmdRecord        Kind = "record"         // an audit entry only (Event, Detail): conflicts, alerts
	CmdDelete        Kind = "delete"         // forget a finished, never started or rolled-back-to-0 migration
	CmdRefused       Kind = "refused"        // an API call refused (bad token, wrong role): Error says why
	CmdFlipAbort     Kind = "flip-abort"     // executor: a precondition failed mid-barrier (Error); the old primary stays
	CmdSyncStarted   Kind = "sync-started"   // leader: the replicator runs on Node
	CmdSyncCopied    Kind = "sync-copied"    // leader: the initial copy A to B is done
	CmdSyncStopped   Kind = "sync-stopped"   // leader: the replicator of Node no longer runs (Error: why)
	CmdAuditPrune    Kind = "audit-prune"    // leader: drop audit entries older than Time - Retention (the anchor keeps the chain)
	// CmdSyncCheckpoint (leader) records the running replicator's last
	// checkpoint (Checkpoint). It is bookkeeping taken at every equal
	// reconcile, not an action: it leaves no audit entry.
	CmdSyncCheckpoint Kind = "sync-checkpoint"
	// CmdRetireA (executor, phase 6) records that the proxies (Proxies)
	// are being asked to retire ensemble A: no rollback after it.
	CmdRetireA Kind = "retire-a"
)

// Command is one change to the state. Time and By are set by whoever
// proposes it (never read from the clock in Apply), so replicas agree.
type Command struct {
	Kind      Kind             `json:"kind"`
	Migration string           `json:"migration"`
	By        string           `json:"by"`
	Time      time.Time        `json:"time"`
	Step      Step             `json:"step,omitempty"`
	Config    *MigrationConfig `json:"config,omitempty"`
	Error     string           `json:"error,omitempty"`
	Epoch     int64            `json:"epoch,omitempty"`
	Proxy     string           `json:"proxy,omitempty"`
	Proxies   []string         `json:"proxies,omitempty"`
	Detail    string           `json:"detail,omitempty"`
	Event     string           `json:"event,omitempty"` // for record: what happened
	Node      string           `json:"node,omitempty"`
	API       string           `json:"api,omitempty"`
	// Checkpoint is sync-checkpoint's.
	Checkpoint *SyncCheckpoint `json:"checkpoint,omitempty"`
	// Retention is audit-prune's: entries older than Time - Retention go.
	Retention time.Duration `json:"retention,omitempty"`
	// Resolved (start): the ensembles' ip:port as resolved when the
	// command was made; see MigrationConfig.Resolved.
	Resolved []string `json:"resolved,omitempty"`
}

// Apply validates c and applies it. index is the Raft log index (0 outside
// Raft); it numbers the audit entry. A refused command changes nothing but
// the audit trail. Every entry is hash-chained to the one before it
// (audit.go).
func (s *State) Apply(c Command, index uint64) error {
	if c.Kind == CmdSyncCheckpoint {
		return s.apply(c) // bookkeeping: no audit entry
	}
	var err error
	if c.Kind == CmdAuditPrune {
		var d string
		if d, err = s.applyPrune(c); err == nil {
			c.Detail = d
		}
	} else {
		err = s.apply(c)
	}
	res := "ok"
	switch {
	case err != nil:
		res = err.Error()
	case c.Kind == CmdStepFailed:
		res = "failed: " + c.Error // the step failed: it must not read as ok
	}
	detail := c.Detail
	switch {
	case c.Step != 0 && c.Kind == CmdStepUndone && c.Epoch != 0: // the reverse flip's epoch
		detail = strings.TrimSpace(fmt.Sprintf("%s step=%s epoch=%d", detail, c.Step, c.Epoch))
	case c.Step != 0:
		detail = strings.TrimSpace(detail + " step=" + c.Step.String())
	case c.Epoch != 0:
		detail = strings.TrimSpace(fmt.Sprintf("%s epoch=%d proxy=%s", detail, c.Epoch, c.Proxy))
	case c.Node != "" && c.Kind != CmdNodeJoin:
		detail = strings.TrimSpace(detail + " node=" + c.Node)
	}
	if c.Error != "" && c.Kind != CmdRefused && c.Kind != CmdStepFailed {
		detail = strings.TrimSpace(detail + " error=" + c.Error)
	}
	action := string(c.Kind)
	if c.Kind == CmdRecord && c.Event != "" {
		action = c.Event
	}
	s.appendAudit(AuditEntry{Index: index, Time: c.Time, Migration: c.Migration, By: c.By,
		Action: action, Detail: detail, Result: res})
	return err
}

func (s *State) apply(c Command) error {
	switch c.Kind {
	case CmdRefused:
		return fmt.Errorf("%w: %s", ErrDenied, c.Error)
	case CmdRecord:
		if c.Migration == "" {
			return nil // a cluster-wide event (leader change...)
		}
	case CmdNodeRemove:
		if c.Node == "" {
			return fmt.Errorf("%w: node-remove needs a node id", ErrInvalid)
		}
		delete(s.Nodes, c.Node)
		return nil
	case CmdDelete:
		return s.delete(c)
	}
	if c.Kind == CmdNodeJoin {
		if c.Node == "" || c.API == "" {
			return fmt.Errorf("%w: node-join needs a node id and its API address", ErrInvalid)
		}
		if s.Nodes == nil {
			s.Nodes = map[string]string{}
		}
		s.Nodes[c.Node] = c.API
		return nil
	}
	if c.Kind == CmdCreate {
		if c.Migration == "" || c.Config == nil {
			return fmt.Errorf("%w: create needs an id and a configuration", ErrInvalid)
		}
		epoch := s.Retired[c.Migration]
		if old, ok := s.Migrations[c.Migration]; ok {
			if !old.restartable() {
				return fmt.Errorf("%w: %s is %s at step %s (a finished, never started or rolled-back-to-0 migration can be created again; zk-migrate delete removes one)",
					ErrExists, c.Migration, old.Status, old.Step)
			}
			epoch = max(epoch, old.Epoch)
		}
		if err := s.exclusive(c.Migration, c.Config); err != nil {
			return err
		}
		s.Migrations[c.Migration] = &Migration{ID: c.Migration, Config: *c.Config, Step: StepNone,
			StepName: StepNone.String(), Status: StatusPending, Primary: ensemble.Source, Epoch: epoch, Created: c.Time, Updated: c.Time}
		return nil
	}
	m, ok := s.Migrations[c.Migration]
	if !ok {
		return fmt.Errorf("%w: %q", ErrNotFound, c.Migration)
	}
	if c.Kind == CmdRecord {
		return nil // the audit entry is the point
	}
	if c.Kind == CmdStart {
		if err := s.exclusive(m.ID, m.Config.withResolved(c.Resolved)); err != nil {
			return err
		}
	}
	if err := m.apply(c); err != nil {
		return err
	}
	if c.Kind == CmdStart && len(c.Resolved) > 0 {
		m.Config.Resolved = slices.Clone(c.Resolved)
	}
	m.StepName = m.Step.String()
	m.Updated = c.Time
	return nil
}

func invalid(m *Migration, c Command, why string) error {
	return fmt.Errorf("%w: %s on %s (step %s, %s): %s", ErrInvalid, c.Kind, m.ID, m.Step, m.Status, why)
}

// enter moves to step st: it waits for approval when the configuration
// requires it, else it is ready to run.
func (m *Migration) enter(st Step) {
	m.Step = st
	m.LastError = ""
	switch {
	case st == StepDone:
		m.Status = StatusCompleted
	case m.Config.RequireApproval:
		m.Status = StatusAwaitingApproval
	default:
		m.Status = StatusRunning
	}
}

func (m *Migration) apply(c Command) error {
	switch c.Kind {
	case CmdStart:
		if m.Step != StepNone || m.Status == StatusRollingBack {
			return invalid(m, c, "already started")
		}
		m.enter(StepDeployB)
	case CmdApprove:
		if m.Status != StatusAwaitingApproval {
			return invalid(m, c, "nothing awaits approval")
		}
		if c.Step != 0 && c.Step != m.Step {
			return invalid(m, c, fmt.Sprintf("the step awaiting approval is %s, not %s", m.Step, c.Step))
		}
		m.Status = StatusRunning
	case CmdAdvance:
		if m.Status != StatusSucceeded {
			return invalid(m, c, "the current step has not succeeded")
		}
		if c.Step != m.Step+1 {
			return invalid(m, c, fmt.Sprintf("the next step is %s", m.Step+1))
		}
		if m.Step == StepFlip && m.Primary != ensemble.Target {
			return invalid(m, c, "the flip has not completed")
		}
		m.enter(c.Step)
	case CmdRetry:
		if m.Status != StatusFailed {
			return invalid(m, c, "the step has not failed")
		}
		m.Status = StatusRunning
		m.LastError = ""
	case CmdPause:
		if m.Paused || m.Status == StatusCompleted {
			return invalid(m, c, "nothing to pause")
		}
		m.Paused = true
	case CmdResume:
		if !m.Paused {
			return invalid(m, c, "not paused")
		}
		m.Paused = false
	case CmdRollback:
		if m.Step == StepNone || m.Status == StatusCompleted || m.Status == StatusRollingBack {
			return invalid(m, c, "nothing to roll back")
		}
		if c.Step >= m.Step || c.Step < StepNone {
			return invalid(m, c, fmt.Sprintf("can only roll back to an earlier step than %s", m.Step))
		}
		if m.Step >= StepRemoveA && m.Status == StatusSucceeded {
			return invalid(m, c, "ensemble A is removed: a rollback is no longer possible")
		}
		if m.ARetired {
			return invalid(m, c, "the proxies have retired ensemble A (phase 6 asked them): a rollback is no longer possible; retry phase 6")
		}
		m.RollbackTo = c.Step
		m.Undone = 0
		m.Status = StatusRollingBack
	case CmdStepUndone:
		if m.Status != StatusRollingBack {
			return invalid(m, c, "no rollback in progress")
		}
		if c.Step <= m.RollbackTo {
			return invalid(m, c, fmt.Sprintf("the rollback goes to %s: %s stays", m.RollbackTo, c.Step))
		}
		if next := m.NextUndo(); c.Step != next {
			done := "none undone yet"
			if m.Undone != 0 {
				done = "undone down to " + m.Undone.String()
			}
			return invalid(m, c, fmt.Sprintf("the next step to undo is %s (%s)", next, done))
		}
		m.Undone = c.Step
		m.LastError = ""
		if c.Step == StepFlip && c.Epoch != 0 {
			// The reverse flip is done: the proxies use A under Epoch.
			if c.Epoch > m.Epoch {
				m.Epoch = c.Epoch
			}
			m.Primary = ensemble.Source
			m.Flip = nil
		}
	case CmdRolledBack:
		if m.Status != StatusRollingBack || c.Step != m.RollbackTo {
			return invalid(m, c, "no rollback to that step in progress")
		}
		m.Step = c.Step
		m.RollbackTo = 0
		m.Undone = 0
		m.LastError = ""
		m.Flip = nil
		if c.Epoch > m.Epoch {
			m.Epoch = c.Epoch // the reverse flip's epoch: a later flip goes above it
		}
		if m.Step < StepFlip || (m.Step == StepFlip && m.Primary != ensemble.Target) {
			m.Primary = ensemble.Source
		}
		// Post-rollback validation: the step rolled back to runs again (its
		// runner is idempotent) and must verify before it counts as done.
		m.Status = StatusRunning
		if m.Step == StepNone {
			m.Status = StatusPending
			m.Sync = SyncState{} // stopped by the rollback; a new start copies A to B again
		}
	case CmdStepRunning:
		if m.Status != StatusRunning && m.Status != StatusFailed || c.Step != m.Step {
			return invalid(m, c, "the step is not ready to run")
		}
		if m.Paused {
			return invalid(m, c, "paused")
		}
		m.Status = StatusRunning
		m.LastError = "" // a retry; the audit trail keeps the failure
	case CmdStepSucceeded:
		if m.Status != StatusRunning || c.Step != m.Step {
			return invalid(m, c, "the step is not running")
		}
		if m.Step == StepFlip && m.Primary != ensemble.Target {
			return invalid(m, c, "the flip barrier has not completed")
		}
		m.Status = StatusSucceeded
		if m.Step == StepRemoveA {
			m.enter(StepDone)
		}
	case CmdStepFailed:
		if m.Status == StatusRollingBack && c.Step == m.Step {
			m.LastError = c.Error // what holds the rollback up; it is retried
			break
		}
		if m.Status != StatusRunning || c.Step != m.Step {
			return invalid(m, c, "the step is not running")
		}
		m.Status = StatusFailed
		m.LastError = c.Error
	case CmdRetireA:
		if m.Step != StepRemoveA || m.Status != StatusRunning {
			return invalid(m, c, "not running phase 6")
		}
		m.ARetired = true
	case CmdFlipBegin:
		if m.Step != StepFlip || m.Status != StatusRunning {
			return invalid(m, c, "not in the flip step")
		}
		if c.Epoch <= m.Epoch {
			return fmt.Errorf("%w: %d, the migration is at epoch %d", ErrStaleEpoch, c.Epoch, m.Epoch)
		}
		m.Epoch = c.Epoch
		m.Flip = &Flip{Epoch: c.Epoch, Expected: sortedCopy(c.Proxies), Primary: ensemble.Target}
	case CmdFlipAck, CmdFlipFence:
		if m.Flip == nil || m.Flip.Done {
			return invalid(m, c, "no flip barrier open")
		}
		if c.Epoch != m.Flip.Epoch {
			return fmt.Errorf("%w: %d, the barrier is at epoch %d", ErrStaleEpoch, c.Epoch, m.Flip.Epoch)
		}
		if !slices.Contains(m.Flip.Expected, c.Proxy) {
			return fmt.Errorf("%w: %s", ErrUnknownProxy, c.Proxy)
		}
		if slices.Contains(m.Flip.Acked, c.Proxy) || slices.Contains(m.Flip.Fenced, c.Proxy) {
			return nil // idempotent: a repeated ack or fence changes nothing
		}
		if c.Kind == CmdFlipAck {
			m.Flip.Acked = append(m.Flip.Acked, c.Proxy)
			slices.Sort(m.Flip.Acked)
		} else {
			m.Flip.Fenced = append(m.Flip.Fenced, c.Proxy)
			slices.Sort(m.Flip.Fenced)
		}
	case CmdFlipDone:
		if m.Flip == nil || m.Flip.Done || c.Epoch != m.Flip.Epoch {
			return invalid(m, c, "no flip barrier open at that epoch")
		}
		if len(m.Flip.Acked)+len(m.Flip.Fenced) != len(m.Flip.Expected) {
			return invalid(m, c, fmt.Sprintf("%d of %d proxies have not acknowledged or been fenced",
				len(m.Flip.Expected)-len(m.Flip.Acked)-len(m.Flip.Fenced), len(m.Flip.Expected)))
		}
		m.Flip.Done = true
		m.Primary = m.Flip.Primary
	case CmdFlipCommit:
		if m.Flip == nil || m.Flip.Done || c.Epoch != m.Flip.Epoch {
			return invalid(m, c, "no flip barrier open at that epoch")
		}
		m.Flip.Committed = true
	case CmdFlipAbort:
		if m.Flip == nil || m.Flip.Done || c.Epoch != m.Flip.Epoch {
			return invalid(m, c, "no flip barrier open at that epoch")
		}
		if m.Flip.Committed {
			return invalid(m, c, "the flip is committed (the old primary is fenced): it can only be completed")
		}
		// The primary stays; the proxies that acknowledged were sent back
		// to it under the next epoch, which a later flip goes above.
		m.Flip = nil
		m.Epoch = c.Epoch + 1
		m.Status = StatusFailed
		m.LastError = "flip aborted, primary stays " + string(m.Primary) + ": " + c.Error
	case CmdSyncStarted:
		if c.Node == "" {
			return invalid(m, c, "sync-started needs the node")
		}
		m.Sync.Running, m.Sync.Node, m.Sync.Since, m.Sync.Stopped = true, c.Node, c.Time, ""
	case CmdSyncCopied:
		m.Sync.Copied = true
	case CmdSyncCheckpoint:
		if c.Checkpoint == nil || !m.Sync.Running || c.Node != m.Sync.Node || c.Checkpoint.Node != c.Node {
			return invalid(m, c, fmt.Sprintf("a checkpoint of %s, whose sync is not recorded as running", c.Node))
		}
		cp := *c.Checkpoint
		m.Sync.Checkpoint = &cp
	case CmdSyncStopped:
		if !m.Sync.Running || c.Node != m.Sync.Node {
			return invalid(m, c, fmt.Sprintf("the sync of %s is not recorded as running", c.Node))
		}
		m.Sync.Running, m.Sync.Stopped = false, c.Error
	default:
		return invalid(m, c, "unknown command")
	}
	return nil
}

// NextUndo is the step a rollback in progress undoes next: the current
// step until an undo is recorded, then the one below the last undone
// (RollbackTo when every undo is done).
func (m *Migration) NextUndo() Step {
	if m.Undone != 0 {
		return m.Undone - 1
	}
	return m.Step
}

func sortedCopy(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	return out
}

// Fenced reports whether proxy may no longer act on the migration's old
// primary: it was fenced in the current or an earlier flip, or holds an
// epoch older than the migration's.
func (m *Migration) Fenced(proxy string, epoch int64) bool {
	if epoch < m.Epoch && m.Flip != nil && m.Flip.Done {
		return true
	}
	return m.Flip != nil && slices.Contains(m.Flip.Fenced, proxy)
}
