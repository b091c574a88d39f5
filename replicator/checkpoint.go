package replicator

import (
	"context"
	"fmt"
	"time"

	"github.com/zk-migrate/zk-migrate/zkclient"
)

// Checkpoint is a moment at which both sides were found equal: every
// transaction of side s up to Zxid[s] is reflected in the trees that a full
// reconcile read and found equal (the zxid is taken before the read, so it
// is a lower bound). A replicator that starts without the agreed versions
// of a former one (a new control leader) uses it to tell, for a znode found
// on one side only, a deletion made on the other side after the checkpoint
// (the survivor existed, unchanged, before it: the other side had it too)
// from a creation (the survivor is younger than the checkpoint), so a
// znode deleted while no sync ran is deleted on the other side rather than
// resurrected. Sessions are the replicator's writer sessions then: an
// ephemeral node one of them owns is a copy, which vanishes when that
// session expires, never an original.
type Checkpoint struct {
	Zxid     [2]int64  `json:"zxid"`
	Sessions [2]int64  `json:"sessions"`
	Time     time.Time `json:"time"`
}

// inference is what the checkpoint says about a path not yet agreed on.
type inference int

const (
	inferNothing   inference = iota // decide as without a checkpoint
	inferAgreed                     // st holds what both sides agreed on at the checkpoint
	inferStaleCopy                  // a former replicator's ephemeral copy: leave it to expire
)

// inferLocked derives, for a path with nothing agreed yet, the versions both
// sides agreed on at the checkpoint: a side whose znode existed unchanged
// before the checkpoint agrees with what it holds; one whose znode was
// created or changed after it moved; a side lacking a znode the other side
// held before the checkpoint deleted it. Ephemeral nodes are left to the
// rules without a checkpoint (an original's copy on the other side was
// owned by a former replicator and may have expired), except the former
// replicator's own copies, which are never copied back.
func (c *Continuous) inferLocked(p string, r [2]*read) (st [2]version, how inference) {
	cp := c.checkpoint
	if cp == nil || isHeartbeat(p) || !r[SideA].exists && !r[SideB].exists {
		return st, inferNothing
	}
	var before, unchanged [2]bool
	for _, side := range []Side{SideA, SideB} {
		x := r[side]
		if !x.exists {
			continue
		}
		if owner := x.stat.EphemeralOwner; owner != 0 {
			if owner == cp.Sessions[side] && !r[side.other()].exists &&
				(c.conns[side] == nil || owner != c.conns[side].SessionID()) {
				return st, inferStaleCopy
			}
			return st, inferNothing
		}
		before[side] = x.stat.Czxid <= cp.Zxid[side]
		unchanged[side] = before[side] && x.stat.Mzxid <= cp.Zxid[side]
	}
	moved := version{exists: true, mzxid: -1} // differs from any state read
	for _, side := range []Side{SideA, SideB} {
		other := side.other()
		switch {
		case r[side].exists && unchanged[side]:
			st[side] = r[side].version()
		case r[side].exists:
			st[side] = moved
		case before[other]:
			st[side] = moved // it had the node at the checkpoint: deleted since
		default:
			st[side] = version{} // absent then and now
		}
	}
	return st, inferAgreed
}

// validateCheckpoint drops a checkpoint that cannot belong to these
// ensembles' history: a side whose current zxid is below the checkpoint's
// was rebuilt since (zxids restart on a new ensemble).
func (c *Continuous) validateCheckpoint(ctx context.Context) error {
	c.mu.Lock()
	cp := c.checkpoint
	c.mu.Unlock()
	if cp == nil {
		return nil
	}
	zxids, err := c.currentZxids(ctx)
	if err != nil {
		return err
	}
	for _, side := range []Side{SideA, SideB} {
		if zxids[side] < cp.Zxid[side] {
			c.log.Warn("sync checkpoint ignored: the ensemble's zxid is below it (rebuilt since?); a znode deleted on one side while no sync ran may come back from the other",
				"side", side, "zxid", fmt.Sprintf("0x%x", zxids[side]), "checkpoint", fmt.Sprintf("0x%x", cp.Zxid[side]))
			c.mu.Lock()
			c.checkpoint = nil
			c.mu.Unlock()
			return nil
		}
	}
	c.log.Info("resuming from the sync checkpoint", "taken", cp.Time.Format(time.RFC3339),
		"zxid_a", fmt.Sprintf("0x%x", cp.Zxid[SideA]), "zxid_b", fmt.Sprintf("0x%x", cp.Zxid[SideB]))
	return nil
}

// currentZxids syncs each writer's server with its leader and returns the
// zxid it has applied: a lower bound for what later reads on it reflect.
func (c *Continuous) currentZxids(ctx context.Context) ([2]int64, error) {
	var out [2]int64
	for _, side := range []Side{SideA, SideB} {
		if err := c.conns[side].Sync(ctx, "/"); err != nil {
			return out, fmt.Errorf("sync on %s: %w", side, err)
		}
		out[side] = c.conns[side].LastZxid()
	}
	return out, nil
}

// checkpointLocked records a checkpoint after a full reconcile whose
// verification read began at zxids and found every root equal, with no
// conflict, deferred difference or hidden ACL left, and reports it.
func (c *Continuous) checkpointLocked(zxids [2]int64, conns [2]*zkclient.Conn) (Checkpoint, bool) {
	if len(c.conflicts) > 0 || len(c.deferred) > 0 || len(c.unreadable) > 0 {
		return Checkpoint{}, false
	}
	for root, eq := range c.digestEqual {
		if !eq && root != HeartbeatRoot {
			return Checkpoint{}, false
		}
	}
	cp := Checkpoint{Zxid: zxids, Sessions: [2]int64{conns[SideA].SessionID(), conns[SideB].SessionID()}, Time: time.Now().UTC()}
	c.checkpoint = &cp
	return cp, true
}

// LastCheckpoint is the last checkpoint taken or given (nil if none).
func (c *Continuous) LastCheckpoint() *Checkpoint {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.checkpoint == nil {
		return nil
	}
	cp := *c.checkpoint
	return &cp
}
