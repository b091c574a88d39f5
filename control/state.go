// Package control is zk-migrate's migration state: the phases of a
// migration, approvals, pause and rollback, the flip barrier, and the audit
// trail, as a deterministic state machine that raftstore replicates.
//
// Every change is a Command. State.Apply validates it against the current
// state and either applies it or returns an error and changes nothing, so
// every replica that applies the same log reaches the same state, and a
// command applied twice (a new leader repeating its predecessor's last
// action) is refused instead of acting twice.
//
// Usage:
//
//	s := control.NewState()
//	err := s.Apply(control.Command{Kind: control.CmdCreate, Migration: "m1", By: "alice", Time: now,
//		Config: &control.MigrationConfig{RequireApproval: true}})
//	err = s.Apply(control.Command{Kind: control.CmdStart, Migration: "m1", By: "alice", Time: now})
package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/zk-migrate/zk-migrate/ensemble"
	"sort"
	"time"
)

// Step is one step of a migration, in order. The six phases are the
// product document's; the flip of the primary ensemble sits between phase
// 1 and phase 2 (SPEC.md, "Phases and the flip").
type Step int

// The steps of a migration.
const (
	StepNone         Step = iota // created, not started
	StepDeployB                  // phase 1: deploy ZK B, start sync
	StepFlip                     // the fenced flip of every proxy's primary from A to B
	StepMastersOnB               // phase 2: Mesos masters on B join the master set
	StepMastersOffA              // phase 3: masters on A stop; leadership moves to B
	StepAgentsOnB                // phase 4: agents on B register
	StepDrainAgentsA             // phase 5: agents on A drained and decommissioned
	StepRemoveA                  // phase 6: sync stopped, A archived
	StepDone                     // the migration is complete
)

var stepNames = map[Step]string{
	StepNone: "not-started", StepDeployB: "1-deploy-b-and-sync", StepFlip: "flip",
	StepMastersOnB: "2-masters-on-b", StepMastersOffA: "3-masters-off-a", StepAgentsOnB: "4-agents-on-b",
	StepDrainAgentsA: "5-drain-agents-a", StepRemoveA: "6-remove-a", StepDone: "done",
}

func (s Step) String() string {
	if n, ok := stepNames[s]; ok {
		return n
	}
	return fmt.Sprintf("step(%d)", int(s))
}

// Phase is the product document's phase number of a step (the flip is 1.5,
// reported as 1).
func (s Step) Phase() int {
	switch {
	case s <= StepFlip:
		return int(s) // 0, 1; the flip belongs to phase 1's end
	case s >= StepRemoveA:
		return 6
	default:
		return int(s) - 1
	}
}

// StepForPhase maps a phase number (1-6) to its step.
func StepForPhase(phase int) (Step, error) {
	switch {
	case phase == 1:
		return StepDeployB, nil
	case phase >= 2 && phase <= 6:
		return Step(phase + 1), nil
	}
	return 0, fmt.Errorf("control: phase %d: want 1 to 6", phase)
}

// Status of the current step.
type Status string

// Statuses.
const (
	StatusPending          Status = "pending"           // created
	StatusAwaitingApproval Status = "awaiting-approval" // the step waits for an operator
	StatusRunning          Status = "running"           // the executor works on the step
	StatusSucceeded        Status = "succeeded"         // the step's success criteria held
	StatusFailed           Status = "failed"            // the step failed; retry, roll back or fix
	StatusRollingBack      Status = "rolling-back"      // undoing steps down to RollbackTo
	StatusCompleted        Status = "completed"         // StepDone reached
)

// MigrationConfig is the part of the operator's configuration the state
// machine itself needs; the rest travels opaquely in Raw.
type MigrationConfig struct {
	SourceZK        string `json:"source_zk"`
	TargetZK        string `json:"target_zk"`
	RequireApproval bool   `json:"require_manual_approval"`
	// Paths are the synced subtrees: two active migrations may not share
	// an ensemble server and overlapping paths.
	Paths []string        `json:"paths,omitempty"`
	Raw   json.RawMessage `json:"raw,omitempty"`
	// Resolved are the ip:port of both ensembles' servers, resolved by the
	// API when the migration was created or started (never inside Apply:
	// the state machine must stay deterministic); exclusivity compares them.
	Resolved []string `json:"resolved,omitempty"`
}

// Flip is the barrier of one flip attempt (hard problem 7).
type Flip struct {
	Epoch int64 `json:"epoch"`
	// Expected are the live proxies when the barrier began; Acked those
	// that drained their mirror writes and stopped writing to the old
	// primary; Fenced those the control plane declared out (dead,
	// partitioned): they must not write to the old primary again, and a
	// proxy that comes back with an older epoch is refused.
	Expected []string `json:"expected"`
	Acked    []string `json:"acked"`
	Fenced   []string `json:"fenced"`
	Done     bool     `json:"done"`
	// Committed: every proxy held (or was fenced) and the guard held; the
	// fences are raised next, so the flip can no longer be aborted, only
	// completed (a new leader finishes it).
	Committed bool `json:"committed,omitempty"`
	// Primary is the ensemble the proxies use once the flip is done.
	Primary ensemble.Name `json:"primary"`
}

// Migration is one migration's state.
type Migration struct {
	ID         string          `json:"id"`
	Config     MigrationConfig `json:"config"`
	Step       Step            `json:"step"`
	StepName   string          `json:"step_name"`
	Status     Status          `json:"status"`
	Paused     bool            `json:"paused"`
	RollbackTo Step            `json:"rollback_to,omitempty"`
	// Undone is, while rolling back, the lowest step whose undo is
	// recorded done (step-undone; 0: none yet). The undos go newest
	// first, so every step from the current one down to Undone is undone:
	// a new leader resumes below it and never repeats a finished undo
	// (the undo of phase 3 run again after phase 2's had begun would
	// start a B master phase 2's undo had stopped).
	Undone    Step   `json:"undone,omitempty"`
	LastError string `json:"last_error,omitempty"`
	// Epoch is the highest flip epoch ever begun; Primary the ensemble the
	// proxies must use ("A" until a flip completes).
	Epoch   int64         `json:"epoch"`
	Primary ensemble.Name `json:"primary"`
	Flip    *Flip         `json:"flip,omitempty"`
	// Sync is what the replicated state knows of the replicator: the
	// leader records each start and stop, so every node can tell whether
	// it runs (SPEC.md, "Work that follows leadership").
	Sync SyncState `json:"sync"`
	// ARetired: phase 6 has asked the proxies to retire ensemble A
	// (retire-a); a rollback is refused from then on.
	ARetired bool      `json:"a_retired,omitempty"`
	Created  time.Time `json:"created"`
	Updated  time.Time `json:"updated"`
}

// SyncState is the replicator's state as the leader recorded it.
type SyncState struct {
	// Running: the node Node runs the replicator since Since.
	Running bool      `json:"running"`
	Node    string    `json:"node,omitempty"`
	Since   time.Time `json:"since,omitempty"`
	// Copied: the initial copy A to B is done. Every later start (a new
	// leader, a rollback) resumes continuous sync without a copy: a copy
	// deletes what is only on the target.
	Copied bool `json:"copied"`
	// Stopped says why the replicator last stopped.
	Stopped string `json:"stopped,omitempty"`
	// Checkpoint is the last moment the running replicator verified both
	// sides equal: the next leader's replicator resumes from it, so a
	// znode deleted while no sync ran is not copied back (SPEC 4c).
	Checkpoint *SyncCheckpoint `json:"checkpoint,omitempty"`
}

// SyncCheckpoint is replicator.Checkpoint as the replicated state keeps
// it: per side (A, B) the zxid up to which both trees were verified equal,
// and the replicator's writer sessions then; Node is the control node
// whose replicator took it.
type SyncCheckpoint struct {
	Zxid     [2]int64  `json:"zxid"`
	Sessions [2]int64  `json:"sessions"`
	Time     time.Time `json:"time"`
	Node     string    `json:"node"`
}

// SyncRequired reports whether the replicator must run now: from phase 1's
// start until phase 6 runs, in every status, and while rolling back to
// phase 1 or later (or to 0 across the flip, until the reverse flip). (The first start is the executor's, after phase 1's
// pre-flight; the leader restarts it after that.)
func (m *Migration) SyncRequired() bool {
	switch {
	case m.Step < StepDeployB || m.Step >= StepDone:
		return false
	case m.Status == StatusRollingBack:
		// Below phase 1 too while B is primary: the reverse flip needs A
		// to have every change first.
		return m.RollbackTo >= StepDeployB || m.Primary == ensemble.Target
	case m.Step == StepDeployB:
		return m.Status != StatusAwaitingApproval
	case m.Step == StepRemoveA:
		return m.Status == StatusAwaitingApproval // phase 6's action stops it
	}
	return true
}

// SyncCopied reports whether the initial copy A to B is done: recorded, or
// implied by phase 1 having succeeded (state written before the record
// existed). A sync started after it never copies.
func (m *Migration) SyncCopied() bool {
	return m.Sync.Copied || m.Step > StepDeployB || m.Step == StepDeployB && m.Status == StatusSucceeded
}

// SyncProblem says why the sync is not healthy by the replicated state
// alone, or "" (leader is the current control-plane leader's id, "" if
// none): a replicator that must run is recorded as running on the leader.
func (m *Migration) SyncProblem(leader string) string {
	switch {
	case !m.SyncRequired():
		return ""
	case !m.Sync.Running && m.Sync.Node == "":
		return "sync has not started yet"
	case !m.Sync.Running && m.Sync.Stopped != "":
		return "sync is not running: " + m.Sync.Stopped
	case !m.Sync.Running:
		return "sync is not running"
	case leader == "":
		return "no control-plane leader: sync is not running"
	case m.Sync.Node != leader:
		return fmt.Sprintf("sync is not running: it ran on %s, which no longer leads; %s has not started it yet", m.Sync.Node, leader)
	}
	return ""
}

// AuditEntry records one applied command or one refused one. Seq, PrevHash
// and Hash chain it to the entry before it (audit.go).
type AuditEntry struct {
	Seq       uint64    `json:"seq"`
	Index     uint64    `json:"index"`
	Time      time.Time `json:"time"`
	Migration string    `json:"migration"`
	By        string    `json:"by"`
	Action    string    `json:"action"`
	Detail    string    `json:"detail,omitempty"`
	Result    string    `json:"result"` // "ok" or the error
	PrevHash  string    `json:"prev_hash"`
	Hash      string    `json:"hash"`
}

// State is every migration and the audit trail.
type State struct {
	Migrations map[string]*Migration `json:"migrations"`
	Audit      []AuditEntry          `json:"audit"`
	// AuditAnchor is the last entry pruned from Audit (nil before any
	// pruning): the first retained entry chains to its hash.
	AuditAnchor *AuditAnchor `json:"audit_anchor,omitempty"`
	// Nodes maps control-plane node ids to their API base URLs, so any
	// node can forward a write to the leader.
	Nodes map[string]string `json:"nodes,omitempty"`
	// Retired keeps the last flip epoch of each deleted migration: a
	// migration created again under the same id starts above it, so a
	// proxy still holding the old epoch can never pass for a current one.
	Retired map[string]int64 `json:"retired,omitempty"`
}

// NewState returns an empty state.
func NewState() *State { return &State{Migrations: map[string]*Migration{}} }

// Sentinel errors; Apply wraps them with detail.
var (
	ErrExists       = errors.New("control: migration already exists")
	ErrNotFound     = errors.New("control: no such migration")
	ErrInvalid      = errors.New("control: not allowed now")
	ErrStaleEpoch   = errors.New("control: stale flip epoch")
	ErrUnknownProxy = errors.New("control: proxy is not part of this flip")
	ErrOverlap      = errors.New("control: overlaps an active migration")
	ErrDenied       = errors.New("control: refused")
)

// MigrationIDs lists the migrations in id order.
func (s *State) MigrationIDs() []string {
	ids := make([]string, 0, len(s.Migrations))
	for id := range s.Migrations {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}
