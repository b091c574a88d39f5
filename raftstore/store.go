// Package raftstore replicates the control.State of zk-migrate's control
// plane with hashicorp/raft, storing the log and stable state in BoltDB
// (raft-boltdb) and snapshots on disk, so the migration survives the loss
// of any control-plane node.
//
// Usage:
//
//	n, err := raftstore.Open(raftstore.Config{ID: "c1", Dir: "/var/lib/zk-migrate/c1",
//		BindAddr: "10.0.0.1:7000", Bootstrap: true})
//	defer n.Close()
//	err = n.WaitLeader(ctx)
//	err = n.Apply(ctx, control.Command{...}) // only on the leader: ErrNotLeader elsewhere
//	st := n.State()                         // a copy, readable on any node
package raftstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"

	"github.com/zk-migrate/zk-migrate/control"
)

// Config configures one control-plane node.
type Config struct {
	// ID names the node in the cluster ("c1").
	ID string
	// Dir holds raft.db (log and stable store) and snapshots/.
	Dir string
	// BindAddr is the Raft transport address ("127.0.0.1:7000"); Advertise,
	// if set, is the address other nodes use to reach it.
	BindAddr  string
	Advertise string
	// Bootstrap makes this node start a new single-node cluster when it has
	// no state yet. Other nodes join it through the leader's Join.
	Bootstrap bool
	// TLS, if set, makes the Raft transport mutual TLS (tls_stream.go);
	// every node of the cluster needs it.
	TLS *TLS
	// Logger (default slog.Default()).
	Logger *slog.Logger
	// Timing, for tests (defaults are hashicorp/raft's).
	HeartbeatTimeout, ElectionTimeout, LeaderLeaseTimeout time.Duration
}

// ErrNotLeader means the command must go to the leader; Leader says which.
var ErrNotLeader = errors.New("raftstore: not the leader")

// NotLeaderError carries the current leader's address, when known.
type NotLeaderError struct{ Leader string }

func (e *NotLeaderError) Error() string {
	if e.Leader == "" {
		return "raftstore: not the leader (no leader elected yet)"
	}
	return "raftstore: not the leader; the leader is " + e.Leader
}

func (e *NotLeaderError) Unwrap() error { return ErrNotLeader }

// Node is one control-plane member.
type Node struct {
	cfg   Config
	raft  *raft.Raft
	fsm   *fsm
	store *raftboltdb.BoltStore
	trans *raft.NetworkTransport
	// observer logs leader changes until done closes.
	observer *raft.Observer
	done     chan struct{}
	watched  chan struct{}
	// leaderChanges counts the leaders this node has seen take over.
	leaderChanges atomic.Uint64
}

// Open starts a node, recovering its state from Dir.
func Open(cfg Config) (*Node, error) {
	if cfg.ID == "" || cfg.Dir == "" || cfg.BindAddr == "" {
		return nil, errors.New("raftstore: ID, Dir and BindAddr are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("raftstore: data dir: %w", err)
	}
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.ID)
	rc.LogOutput = io.Discard
	if cfg.HeartbeatTimeout > 0 {
		rc.HeartbeatTimeout = cfg.HeartbeatTimeout
	}
	if cfg.ElectionTimeout > 0 {
		rc.ElectionTimeout = cfg.ElectionTimeout
	}
	if cfg.LeaderLeaseTimeout > 0 {
		rc.LeaderLeaseTimeout = cfg.LeaderLeaseTimeout
	}
	store, err := raftboltdb.NewBoltStore(filepath.Join(cfg.Dir, "raft.db"))
	if err != nil {
		return nil, fmt.Errorf("raftstore: open %s: %w", filepath.Join(cfg.Dir, "raft.db"), err)
	}
	snaps, err := raft.NewFileSnapshotStore(filepath.Join(cfg.Dir, "snapshots"), 3, io.Discard)
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("raftstore: snapshots: %w", err)
	}
	adv := cfg.Advertise
	if adv == "" {
		adv = cfg.BindAddr
	}
	tcpAdv, err := net.ResolveTCPAddr("tcp", adv)
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("raftstore: advertise address %q: %w", adv, err)
	}
	var trans *raft.NetworkTransport
	if cfg.TLS != nil {
		var st *tlsStream
		if st, err = newTLSStream(cfg.BindAddr, tcpAdv, cfg.TLS, cfg.Logger); err == nil {
			trans = raft.NewNetworkTransport(st, 3, 5*time.Second, io.Discard)
		}
	} else {
		trans, err = raft.NewTCPTransport(cfg.BindAddr, tcpAdv, 3, 5*time.Second, io.Discard)
	}
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("raftstore: listen %s: %w", cfg.BindAddr, err)
	}
	f := &fsm{state: control.NewState(), log: cfg.Logger}
	r, err := raft.NewRaft(rc, f, store, store, snaps, trans)
	if err != nil {
		trans.Close()
		store.Close()
		return nil, fmt.Errorf("raftstore: start raft: %w", err)
	}
	n := &Node{cfg: cfg, raft: r, fsm: f, store: store, trans: trans, done: make(chan struct{}), watched: make(chan struct{})}
	n.watchLeader()
	if cfg.Bootstrap {
		has, err := raft.HasExistingState(store, store, snaps)
		if err != nil {
			n.Close()
			return nil, err
		}
		if !has {
			fut := r.BootstrapCluster(raft.Configuration{Servers: []raft.Server{{ID: rc.LocalID, Address: trans.LocalAddr()}}})
			if err := fut.Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
				n.Close()
				return nil, fmt.Errorf("raftstore: bootstrap: %w", err)
			}
		}
	}
	return n, nil
}

// Addr is the node's Raft address.
func (n *Node) Addr() string { return string(n.trans.LocalAddr()) }

// ID is the node's id.
func (n *Node) ID() string { return n.cfg.ID }

// IsLeader reports whether this node leads.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// Leader returns the leader's address and id, empty when there is none.
func (n *Node) Leader() (addr, id string) {
	a, i := n.raft.LeaderWithID()
	return string(a), string(i)
}

// WaitLeader waits until the cluster has a leader.
func (n *Node) WaitLeader(ctx context.Context) error {
	for {
		if a, _ := n.Leader(); a != "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("raftstore: no leader: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Apply replicates a command and returns the state machine's verdict on
// it: a refused command (control.ErrInvalid...) is still in the log and
// the audit trail. Only the leader can apply.
func (n *Node) Apply(ctx context.Context, c control.Command) error {
	if !n.IsLeader() {
		a, _ := n.Leader()
		return &NotLeaderError{Leader: a}
	}
	if err := ctx.Err(); err != nil {
		// The caller gave up (a stopping executor): replicating its
		// verdict now would act for a caller that is gone.
		return fmt.Errorf("raftstore: %s not replicated: %w", c.Kind, err)
	}
	b, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("raftstore: encode command: %w", err)
	}
	timeout := 10 * time.Second
	if d, ok := ctx.Deadline(); ok {
		timeout = time.Until(d)
	}
	fut := n.raft.Apply(b, timeout)
	if err := fut.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			a, _ := n.Leader()
			return &NotLeaderError{Leader: a}
		}
		return fmt.Errorf("raftstore: replicate %s: %w", c.Kind, err)
	}
	if res, ok := fut.Response().(error); ok && res != nil {
		return res
	}
	return nil
}

// Barrier waits until this node has applied everything committed before
// the call (leader only); reads after it see every earlier write.
func (n *Node) Barrier(timeout time.Duration) error { return n.raft.Barrier(timeout).Error() }

// State returns a deep copy of the replicated state as this node has
// applied it.
func (n *Node) State() *control.State { return n.fsm.snapshotState() }

// Snapshot forces a Raft snapshot (tests and operators).
func (n *Node) Snapshot() error { return n.raft.Snapshot().Error() }

// Close leaves the cluster's traffic (not its membership) and releases
// the files.
func (n *Node) Close() error {
	err := n.raft.Shutdown().Error()
	close(n.done)
	<-n.watched
	n.raft.DeregisterObserver(n.observer)
	n.trans.Close()
	n.store.Close()
	return err
}

// LeaderChanges counts the times this node saw a new leader take over
// since it started (its first leader included).
func (n *Node) LeaderChanges() uint64 { return n.leaderChanges.Load() }

// watchLeader logs and counts every leader change this node sees, until Close.
func (n *Node) watchLeader() {
	ch := make(chan raft.Observation, 8)
	n.observer = raft.NewObserver(ch, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	n.raft.RegisterObserver(n.observer)
	go func() {
		defer close(n.watched)
		var last raft.ServerID
		for {
			select {
			case <-n.done:
				return
			case o := <-ch:
				lo := o.Data.(raft.LeaderObservation)
				if lo.LeaderID == "" {
					n.cfg.Logger.Warn("raft: no leader", "node", n.cfg.ID)
					continue
				}
				if lo.LeaderID != last {
					last = lo.LeaderID
					n.leaderChanges.Add(1)
				}
				n.cfg.Logger.Info("raft: leader changed", "node", n.cfg.ID, "leader", string(lo.LeaderID),
					"leader_raft", string(lo.LeaderAddr), "this_node_leads", string(lo.LeaderID) == n.cfg.ID)
			}
		}
	}()
}

// fsm applies log entries to a control.State.
type fsm struct {
	mu    sync.RWMutex
	state *control.State
	log   *slog.Logger
}

func (f *fsm) Apply(l *raft.Log) any {
	var c control.Command
	if err := json.Unmarshal(l.Data, &c); err != nil {
		return fmt.Errorf("raftstore: undecodable log entry %d: %w", l.Index, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var before control.Migration
	if m := f.state.Migrations[c.Migration]; m != nil {
		before = *m
	}
	err := f.state.Apply(c, l.Index)
	if m := f.state.Migrations[c.Migration]; err == nil && m != nil && (m.Step != before.Step || m.Status != before.Status || m.Primary != before.Primary) {
		f.log.Info("migration changed", "migration", m.ID, "step", m.Step.String(), "status", string(m.Status),
			"primary", m.Primary, "epoch", m.Epoch, "command", string(c.Kind), "by", c.By, "index", l.Index)
	}
	return err
}

func (f *fsm) snapshotState() *control.State {
	f.mu.RLock()
	b, err := json.Marshal(f.state)
	f.mu.RUnlock()
	if err != nil {
		panic(fmt.Sprintf("raftstore: state does not encode: %v", err))
	}
	st := control.NewState()
	if err := json.Unmarshal(b, st); err != nil {
		panic(fmt.Sprintf("raftstore: state does not decode: %v", err))
	}
	return st
}

func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	b, err := json.Marshal(f.state)
	if err != nil {
		return nil, fmt.Errorf("raftstore: encode snapshot: %w", err)
	}
	return snapshot(b), nil
}

func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	st := control.NewState()
	if err := json.NewDecoder(rc).Decode(st); err != nil {
		return fmt.Errorf("raftstore: decode snapshot: %w", err)
	}
	if st.Migrations == nil {
		st.Migrations = map[string]*control.Migration{}
	}
	f.mu.Lock()
	f.state = st
	f.mu.Unlock()
	return nil
}

// snapshot is the encoded state.
type snapshot []byte

func (s snapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (snapshot) Release() {}
