package replicator

import (
	"sort"
	"strings"
	"time"
)

// Beside two-ensemble proxies (ContinuousConfig.Primary set) the proxies'
// mirror converges the secondary S to the primary P within milliseconds of
// every write acknowledged on P, and owns every proxied client's
// ephemerals on S through the client's shadow session. The replicator
// decides such a path with the rules of decideMirroredLocked; SPEC 4c
// ("Beside dual-writing proxies") gives the argument.

// deferral is a difference left to the proxies' mirror: since when, and
// the primary's version then. A change of the primary restarts it.
type deferral struct {
	since   time.Time
	primary version
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
// secondary S; it returns the copy to make, if any.
//
//   - Equal on both sides (whoever wrote S, and whatever owns an ephemeral
//     there): adopted, never copied back, never a conflict.
//   - Only P changed: copied to S at once (the replicator and the mirror
//     then both converge S to P's state, each write conditional on the
//     version read), except a P ephemeral S lacks, owned by a client:
//     that one is the mirror's to create with the client's shadow session.
//   - Everything else (S changed alone, both changed, or that ephemeral)
//     may be the mirror still converging S: it is deferred until it has
//     persisted for MirrorGrace with P unchanged (a change of P restarts
//     the grace: the mirror has new work). Then the mirror is done with
//     every change of P, so what S still holds was written by a client
//     bypassing the proxies (or the mirror failed): a change of S alone
//     is copied to P; both changed is a conflict; but a client's
//     ephemeral on P is never deleted because S lost it (a shadow session
//     re-creating it, or one expired while B was away): it is copied to S
//     instead, owned by the replicator until the owner's mirror replaces
//     it with the shadow session's.
func (c *Continuous) decideMirroredLocked(p string, r [2]read, cur [2]version, changed [2]bool, now time.Time) (action, bool) {
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
	if changed[P] && !changed[S] && !foreignOnP {
		delete(c.deferred, p)
		return action{p, P, *pr, *sr}, true
	}
	d, ok := c.deferred[p]
	if !ok || d.primary != cur[P] {
		c.deferred[p] = deferral{since: now, primary: cur[P]}
		return action{}, false
	}
	if now.Sub(d.since) < c.cfg.MirrorGrace {
		return action{}, false // dueDeferred brings it back
	}
	delete(c.deferred, p)
	switch {
	case foreignOnP:
		c.log.Info("a client's ephemeral on the primary is still missing on the secondary after the mirror's grace: copying it (the owner's proxy, if any, replaces it with its shadow session's)",
			"path", p, "primary", P, "grace", c.cfg.MirrorGrace)
		return action{p, P, *pr, *sr}, true
	case changed[S] && !changed[P]:
		return action{p, S, *sr, *pr}, true // a write that bypassed the proxies
	default:
		if w, ok := c.conflictLocked(p, &r[SideA], &r[SideB], now); ok {
			return action{p, w, r[w], r[w.other()]}, true
		}
		return action{}, false
	}
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

// Deferred is the number of differences left to the proxies' mirror for
// now (for tests and status).
func (c *Continuous) Deferred() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.deferred)
}
