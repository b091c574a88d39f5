package replicator

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/zk-migrate/zk-migrate/ensemble"
)

// Beside two-ensemble proxies (ContinuousConfig.Primary set) the proxies'
// mirror converges the secondary S to the primary P within milliseconds of
// every write acknowledged on P, and owns every proxied client's
// ephemerals on S through the client's shadow session. The replicator
// decides such a path with the rules of decideMirroredLocked; SPEC 4c
// ("Beside dual-writing proxies") gives the argument.

// deferral is a path waiting for MirrorGrace: since when, and the
// primary's version then. A change of the primary restarts it.
type deferral struct {
	since   time.Time
	primary version
	// recheck: not a difference left to the mirror but a copy P to S
	// the replicator made, decided again after the grace.
	recheck bool
	// bypass: only S changed since both sides agreed (rule 4), and not a
	// client's ephemeral on P that S lost: if it persists for the grace
	// it is a write that bypassed the proxies on S, copied to P
	// (Copying).
	bypass bool
}

// isHeartbeat reports whether p is one of the replicator's own heartbeat
// nodes: written by no proxy, decided as without Primary.
func isHeartbeat(p string) bool {
	return p == HeartbeatRoot || strings.HasPrefix(p, HeartbeatRoot+"/")
}

// foreignEphemeralLocked reports whether r, read on side, is an ephemeral
// owned by a session other than the replicator's writer there: a client's
// (through a proxy or not), never a copy the replicator made.
func (c *Continuous) foreignEphemeralLocked(side Side, r *read) bool {
	return r.exists && r.stat.EphemeralOwner != 0 && (c.conns[side] == nil || r.stat.EphemeralOwner != c.conns[side].SessionID())
}

// decideMirroredLocked decides p when proxies mirror the primary P to the
// secondary S; it returns the copy to make, if any. A path changed on both
// sides since both agreed is no conflict beside dual-writing proxies (SPEC
// 4c gives the argument); one found different on both with nothing agreed
// yet (a start without the initial copy) is, once it persisted for
// MirrorGrace with P unchanged.
//
//   - Equal on both sides (whoever wrote S, and whatever owns an ephemeral
//     there): adopted, never copied back.
//   - P changed (whether or not S did): P's state is copied to S at once.
//     The proxies' mirror converges S to the same state after every write
//     P acknowledged, so a change of S on a path P changed too is either
//     the mirror's (an earlier state of P, or its delete before a
//     re-create) or a write that bypassed the proxies and that the
//     mirror overwrites anyway: P wins, as the mirror makes it win.
//   - Except a client's ephemeral on P that S lacks: it is the mirror's,
//     created with the client's shadow session, and waits for MirrorGrace
//     with P unchanged (a change of P restarts the grace). If S still
//     lacks it then, the replicator copies it (a client bypassing the
//     proxies on P, or a mirror that failed; the owner's proxy, if any,
//     replaces the copy with its shadow session's). A client's ephemeral
//     on P is never deleted because S lost its copy.
//   - Only S changed: it waits for MirrorGrace with P unchanged (the mirror
//     verifies each write it makes by reading S then P, in milliseconds,
//     so a state it left on S is gone by then); what persists is a write
//     that bypassed the proxies on S, copied to P.
//   - Except an ephemeral on S whose owner is marked as a proxy's session
//     (proxiedOnS, sessions.go): the mirror's business (its shadow's
//     node, or one whose session's close is pending), never a bypass
//     write, never copied to P. Left alone; found on both sides with
//     nothing agreed, P's state is copied to it after the grace (no
//     conflict: S's state is the mirror's).
func (c *Continuous) decideMirroredLocked(p string, r [2]read, cur [2]version, changed [2]bool, known, proxiedOnS bool, now time.Time) (action, bool) {
	P := *c.primary
	S := P.other()
	pr, sr := &r[P], &r[S]
	if !changed[SideA] && !changed[SideB] {
		delete(c.deferred, p)
		return action{}, false
	}
	if equalReads(pr, sr) {
		delete(c.deferred, p)
		c.adoptLocked(p, cur)
		return action{}, false
	}
	foreignOnP := !sr.exists && c.foreignEphemeralLocked(P, pr)
	// Found on both sides, different, with nothing agreed yet (a start
	// without the initial copy, after writes made while no sync ran): a
	// conflict, once the grace shows it is not the mirror's work.
	unknownOnBoth := !known && pr.exists && sr.exists
	if changed[P] && !foreignOnP && !unknownOnBoth {
		// Checked again on fresh reads after the grace, like the mirror
		// verifies its writes: the read of P this copy is made from may
		// come from a server behind the one whose watch fired, and a
		// delete conditional on a version can hit a node the mirror
		// re-created at the same version.
		c.deferred[p] = deferral{since: now, primary: cur[P], recheck: true}
		return action{p, P, *pr, *sr}, true
	}
	bypass := !changed[P] && !foreignOnP && !unknownOnBoth && !proxiedOnS
	d, ok := c.deferred[p]
	if !ok || d.primary != cur[P] || d.recheck {
		c.deferred[p] = deferral{since: now, primary: cur[P], bypass: bypass}
		return action{}, false
	}
	d.bypass = bypass
	c.deferred[p] = d
	if now.Sub(d.since) < c.cfg.MirrorGrace {
		return action{}, false // dueDeferred brings it back
	}
	delete(c.deferred, p)
	if proxiedOnS {
		owner := sr.stat.EphemeralOwner
		if c.leftToProxy[p] != owner {
			c.leftToProxy[p] = owner
			c.log.Info("an ephemeral of a proxy's session on the secondary differs from the primary after the mirror's grace: never copied to the primary (the proxy's mirror, or the session's close, ends the difference)",
				"path", p, "secondary", S, "owner", fmt.Sprintf("0x%x", owner), "on_primary", pr.exists)
		}
		if unknownOnBoth {
			return action{p, P, *pr, *sr}, true
		}
		return action{}, false
	}
	if foreignOnP {
		c.log.Info("a client's ephemeral on the primary is still missing on the secondary after the mirror's grace: copying it (the owner's proxy, if any, replaces it with its shadow session's)",
			"path", p, "primary", P, "grace", c.cfg.MirrorGrace)
		return action{p, P, *pr, *sr}, true
	}
	if unknownOnBoth {
		if w, ok := c.conflictLocked(p, &r[SideA], &r[SideB], now); ok {
			return action{p, w, r[w], r[w.other()]}, true
		}
		return action{}, false
	}
	return action{p, S, *sr, *pr}, true // a write that bypassed the proxies
}

// dueDeferred returns the deferred paths whose grace has passed, to be
// decided again on fresh reads of both sides.
func (c *Continuous) dueDeferred(now time.Time) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for p, d := range c.deferred {
		if now.Sub(d.since) >= c.cfg.MirrorGrace {
			out = append(out, p)
		}
		if len(out) == c.cfg.MaxBatch {
			break
		}
	}
	sort.Strings(out)
	return out
}

// Deferred is the number of paths waiting for their grace (beside
// dual-writing proxies): differences left to the proxies' mirror for now,
// and copies to the secondary awaiting their verification (for tests and
// status).
func (c *Continuous) Deferred() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.deferred)
}

// SetPrimary changes the proxies' primary (at a flip: the proxies then
// mirror the other way); empty means no proxy dual-writes. The differences
// deferred so far are decided again under the new primary.
func (c *Continuous) SetPrimary(name ensemble.Name) error {
	var primary *Side
	switch name {
	case "":
	case ensemble.Source, ensemble.Target:
		p := SideA
		if name == ensemble.Target {
			p = SideB
		}
		primary = &p
	default:
		return fmt.Errorf("replicator: primary %q: want %q or %q (or empty when no proxy dual-writes)", name, ensemble.Source, ensemble.Target)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if (c.primary == nil) != (primary == nil) || c.primary != nil && *c.primary != *primary {
		c.log.Info("the proxies' primary changed", "primary", name)
		// Decided again at once (dueDeferred): a write that bypassed the
		// proxies on the old secondary, now the primary, is copied to the
		// new secondary without waiting for a reconcile.
		// A fresh grace for the others (recheck).
		for p := range c.deferred {
			c.deferred[p] = deferral{recheck: true}
		}
	}
	c.primary = primary
	return nil
}

// Copying reports whether the running sync holds p's difference as a write
// that bypassed the proxies on the secondary and will copy it to the
// primary when its grace ends (rule 4 of SPEC 4c), so that nothing but
// the grace keeps the two sides apart on p: primary is the proxies'
// primary the caller assumes (it must be the replicator's), onPrimary p's
// node as the caller just read it there (nil: absent). It holds when p
// waits for its MirrorGrace (deferred less than twice the grace ago: a
// round past it is due) with only the secondary changed since both sides
// last agreed, and onPrimary is still the state both agreed on (the
// primary has nothing newer the secondary lacks). The flip's guard accepts
// such a difference (control/server/guard.go): with the secondary as the
// new primary the sync copies it the same way at once.
func (c *Continuous) Copying(p string, primary Side, onPrimary *Node) bool {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.primary == nil || *c.primary != primary {
		return false
	}
	d, ok := c.deferred[p]
	if !ok || !d.bypass || d.recheck || d.since.IsZero() || now.Sub(d.since) >= 2*c.cfg.MirrorGrace {
		return false
	}
	var v version
	if onPrimary != nil {
		v = statVersion(&onPrimary.Stat)
	}
	return v == d.primary
}
