package raftstore

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/hashicorp/raft"
)

// Sentinel errors of membership changes.
var (
	// ErrUnreachable: nothing answers on the address a node would join
	// with; adding it would only add a member that cannot vote.
	ErrUnreachable = errors.New("raftstore: raft address unreachable")
	// ErrUnknownServer: no server with that id is in the configuration.
	ErrUnknownServer = errors.New("raftstore: no such server")
	// ErrLastVoter: removing the server would leave no voter.
	ErrLastVoter = errors.New("raftstore: the last voter cannot be removed")
	// ErrMember: the id or the Raft address of a join already belongs to
	// another member; hashicorp/raft would silently move that member.
	ErrMember = errors.New("raftstore: already a member")
)

// Server is one member of the Raft configuration.
type Server struct {
	ID      string `json:"id"`
	Address string `json:"raft_addr"`
	// Voter is false while the server catches up as a non-voter
	// (Autopilot promotes it).
	Voter bool `json:"voter"`
}

// Servers lists the latest Raft configuration (on any node).
func (n *Node) Servers() ([]Server, error) {
	fut := n.raft.GetConfiguration()
	if err := fut.Error(); err != nil {
		return nil, fmt.Errorf("raftstore: configuration: %w", err)
	}
	var out []Server
	for _, s := range fut.Configuration().Servers {
		out = append(out, Server{ID: string(s.ID), Address: string(s.Address), Voter: s.Suffrage == raft.Voter})
	}
	return out, nil
}

// ProbeTimeout bounds the connection attempt Join makes to a new node.
const ProbeTimeout = 2 * time.Second

// Join adds a node as a non-voter (call it on the leader). It refuses an
// address where nothing accepts a connection, and never changes the
// quorum: the node votes only once Autopilot has seen it catch up. Joining
// again with exactly the same id and address is harmless (a restarted
// node); a join reusing a member's id with another address, or a member's
// address under another id, is refused with ErrMember: hashicorp/raft
// would rewrite that member's address (keeping its vote), and one more
// failure would then lose the quorum.
func (n *Node) Join(id, addr string) error {
	if !n.IsLeader() {
		a, _ := n.Leader()
		return &NotLeaderError{Leader: a}
	}
	servers, err := n.Servers()
	if err != nil {
		return err
	}
	for _, s := range servers {
		switch {
		case s.ID == id && s.Address == addr:
			return nil
		case s.ID == id:
			return fmt.Errorf("%w: node %s is already a member at %s (not %s); to move a node, run `zk-migrate node remove --id %s --confirm` first, then join it again",
				ErrMember, id, s.Address, addr, id)
		case sameAddr(s.Address, addr):
			return fmt.Errorf("%w: raft address %s already belongs to node %s; give the new node its own --raft-addr, or remove %s first (`zk-migrate node remove --id %s --confirm`)",
				ErrMember, addr, s.ID, s.ID, s.ID)
		}
	}
	c, err := net.DialTimeout("tcp", addr, ProbeTimeout)
	if err != nil {
		return fmt.Errorf("%w: %s (%s): %v; start the node first, and check --raft-addr and firewalls", ErrUnreachable, id, addr, err)
	}
	c.Close()
	if err := n.raft.AddNonvoter(raft.ServerID(id), raft.ServerAddress(addr), 0, 10*time.Second).Error(); err != nil {
		return fmt.Errorf("raftstore: add %s (%s) as non-voter: %w", id, addr, err)
	}
	n.cfg.Logger.Info("raft: node joined as non-voter; it votes once caught up", "node", id, "raft", addr)
	return nil
}

// sameAddr reports whether two host:port name the same endpoint: equal,
// or resolving to the same ip:port ("localhost:7000", "127.0.0.1:7000").
func sameAddr(a, b string) bool {
	if a == b {
		return true
	}
	ta, errA := net.ResolveTCPAddr("tcp", a)
	tb, errB := net.ResolveTCPAddr("tcp", b)
	return errA == nil && errB == nil && ta.String() == tb.String()
}

// promote makes a non-voter a voter, unless the configuration changed
// since index.
func (n *Node) promote(id, addr string, index uint64) error {
	if err := n.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), index, 10*time.Second).Error(); err != nil {
		return fmt.Errorf("raftstore: promote %s: %w", id, err)
	}
	return nil
}

// Remove takes a node out of the Raft configuration (call it on the
// leader): the way to retire a dead node, whose vote otherwise counts
// against the quorum forever.
func (n *Node) Remove(id string) error {
	if !n.IsLeader() {
		a, _ := n.Leader()
		return &NotLeaderError{Leader: a}
	}
	servers, err := n.Servers()
	if err != nil {
		return err
	}
	found, voter, voters := false, false, 0
	for _, s := range servers {
		if s.Voter {
			voters++
		}
		if s.ID == id {
			found, voter = true, s.Voter
		}
	}
	if !found {
		return fmt.Errorf("%w: %s", ErrUnknownServer, id)
	}
	if voter && voters == 1 {
		return fmt.Errorf("%w: %s", ErrLastVoter, id)
	}
	if err := n.raft.RemoveServer(raft.ServerID(id), 0, 10*time.Second).Error(); err != nil {
		return fmt.Errorf("raftstore: remove %s: %w", id, err)
	}
	n.cfg.Logger.Info("raft: node removed from the cluster", "node", id)
	return nil
}

// ServerStats is what a node reports of its own Raft progress; the
// leader's Autopilot judges from it whether a non-voter has caught up.
type ServerStats struct {
	ID    string `json:"id"`
	State string `json:"state"`
	Term  uint64 `json:"term"`
	// LastIndex is the last log index the node stored.
	LastIndex uint64 `json:"last_index"`
	// AppliedIndex is the last log index applied to the state machine.
	AppliedIndex uint64 `json:"applied_index"`
	// LastContact is the time since the node last heard from a leader: 0
	// on the leader, -1 if never.
	LastContact time.Duration `json:"last_contact_ns"`
}

// Stats reports this node's Raft progress.
func (n *Node) Stats() ServerStats {
	s := n.raft.Stats()
	st := ServerStats{ID: n.cfg.ID, State: s["state"]}
	st.Term, _ = strconv.ParseUint(s["term"], 10, 64)
	st.LastIndex, _ = strconv.ParseUint(s["last_log_index"], 10, 64)
	st.AppliedIndex, _ = strconv.ParseUint(s["applied_index"], 10, 64)
	switch lc := s["last_contact"]; lc {
	case "0":
	case "never":
		st.LastContact = -1
	default:
		d, err := time.ParseDuration(lc)
		if err != nil {
			d = -1
		}
		st.LastContact = d
	}
	return st
}
