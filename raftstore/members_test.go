package raftstore

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/zk-migrate/zk-migrate/control"
)

// TestJoinOfAMissingNodeKeepsTheLeader: on a one-node cluster, a join to
// an address where nothing listens is refused; a join to an address where
// something listens but no Raft node answers (so it can never catch up)
// is only a non-voter, never promoted: the cluster keeps its leader and
// takes writes, also after a restart, and the dead node can be removed.
func TestJoinOfAMissingNodeKeepsTheLeader(t *testing.T) {
	dir, addr := t.TempDir(), freeAddr(t)
	n := open(t, "c1", dir, addr, true)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	create := control.Command{Kind: control.CmdCreate, Migration: "m1", By: "t", Time: time.Unix(1, 0).UTC(),
		Config: &control.MigrationConfig{SourceZK: "a:1", TargetZK: "b:1"}}
	if err := n.Apply(ctx, create); err != nil {
		t.Fatal(err)
	}

	ghost := freeAddr(t) // nothing listens there
	if err := n.Join("ghost", ghost); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("join of an unreachable node: %v", err)
	}
	// Something listens, but it is not a Raft node.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	if err := n.Join("mute", ln.Addr().String()); err != nil {
		t.Fatalf("join of a listening address: %v", err)
	}
	apctx, apcancel := context.WithCancel(context.Background())
	apdone := make(chan struct{})
	ap := &Autopilot{Node: n, Stats: inProcess([]*Node{n}), StabilizationTime: 100 * time.Millisecond, Interval: 20 * time.Millisecond}
	go func() { defer close(apdone); _ = ap.Run(apctx) }()
	// Writes go on while "mute" cannot catch up, and it never votes.
	for i := 0; i < 10; i++ {
		wctx, wcancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := n.Apply(wctx, control.Command{Kind: control.CmdRecord, Migration: "m1", Event: "tick", By: "t", Time: time.Unix(2, 0).UTC()})
		wcancel()
		if err != nil {
			t.Fatalf("write %d with a non-voter that cannot catch up: %v", i, err)
		}
		time.Sleep(30 * time.Millisecond)
	}
	apcancel()
	<-apdone
	if v := countVoters(t, n); v != 1 {
		t.Fatalf("%d voters: the unreachable node was promoted", v)
	}

	// Restart with the same data directory: still a leader, still writable.
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	n = open(t, "c1", dir, addr, true)
	defer n.Close()
	if err := n.WaitLeader(ctx); err != nil {
		t.Fatalf("after restart: %v", err)
	}
	for !n.IsLeader() {
		time.Sleep(10 * time.Millisecond)
	}
	if err := n.Apply(ctx, control.Command{Kind: control.CmdRecord, Migration: "m1", Event: "after-restart", By: "t", Time: time.Unix(3, 0).UTC()}); err != nil {
		t.Fatalf("write after restart: %v", err)
	}
	// The dead node is removed; the last voter cannot be.
	if err := n.Remove("mute"); err != nil {
		t.Fatal(err)
	}
	if err := n.Remove("mute"); !errors.Is(err, ErrUnknownServer) {
		t.Fatalf("second remove: %v", err)
	}
	if err := n.Remove("c1"); !errors.Is(err, ErrLastVoter) {
		t.Fatalf("removing the last voter: %v", err)
	}
	if servers, _ := n.Servers(); len(servers) != 1 {
		t.Fatalf("servers after remove: %v", servers)
	}
}

// TestJoinedNodeVotesOnceCaughtUp: a real node joins as a non-voter, gets
// the log (more than MaxTrailingLogs entries behind at first), and
// Autopilot promotes it once it has caught up.
func TestJoinedNodeVotesOnceCaughtUp(t *testing.T) {
	base := t.TempDir()
	n1 := open(t, "c1", filepath.Join(base, "c1"), freeAddr(t), true)
	defer n1.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := n1.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	if err := n1.Apply(ctx, control.Command{Kind: control.CmdCreate, Migration: "m1", By: "t", Time: time.Unix(1, 0).UTC(),
		Config: &control.MigrationConfig{SourceZK: "a:1", TargetZK: "b:1"}}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 300; i++ { // more than MaxTrailingLogs behind at first
		if err := n1.Apply(ctx, control.Command{Kind: control.CmdRecord, Migration: "m1", Event: "tick", By: "t", Time: time.Unix(2, 0).UTC()}); err != nil {
			t.Fatal(err)
		}
	}
	n2 := open(t, "c2", filepath.Join(base, "c2"), freeAddr(t), false)
	defer n2.Close()
	if err := n1.Join("c2", n2.Addr()); err != nil {
		t.Fatal(err)
	}
	servers, _ := n1.Servers()
	if len(servers) != 2 || servers[1].Voter {
		t.Fatalf("right after the join: %+v (want c2 a non-voter)", servers)
	}
	promote(t, n1, []*Node{n1, n2}, 2)
	// Promotion follows the replicated log; the state machine applies it
	// right after (on a loaded machine, a moment later).
	for deadline := time.Now().Add(10 * time.Second); len(n2.State().Audit) < 301; {
		if time.Now().After(deadline) {
			t.Fatalf("promoted, and 10 s later applied %d of 301+ entries", len(n2.State().Audit))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st := n2.Stats(); st.LastContact < 0 || st.Term != n1.Stats().Term {
		t.Fatalf("c2 stats %+v", st)
	}
}
