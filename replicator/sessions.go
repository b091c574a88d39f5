package replicator

import (
	"context"
	"fmt"
	"strings"

	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// Session markers (SPEC 4.9, "Session markers"). Every upstream session a
// two-ensemble proxy opens (the primary's and the shadow on the secondary,
// whose roles swap at a flip) marks itself on its own ensemble with an
// ephemeral znode it owns, SessionMarker(its id), sent as the first request
// on the session: ZooKeeper applies a session's requests in order, so the
// marker is committed before any ephemeral the session creates, and it
// goes with the session (closeSession or expiry deletes every ephemeral of
// the session in one transaction). Beside dual-writing proxies the
// replicator reads the marker of an ephemeral's owner on the secondary,
// through the same session it read the ephemeral with and after it: an
// ephemeral whose owner is marked is a proxy session's (the mirror's, or
// a shadow whose close is pending), never a write that bypassed the
// proxies, and is never copied to the primary.
//
// The markers differ between the ensembles by nature: SessionMarkers is
// never read into a Tree (so never copied, compared or digested), and the
// replicator's rounds skip it.

// SessionMarkers is the parent of the session markers, on each ensemble.
const SessionMarkers = HeartbeatRoot + "/sessions"

// SessionMarker is the marker of session id: SessionMarkers/<id as 16 hex
// digits>.
func SessionMarker(id int64) string {
	return fmt.Sprintf("%s/%016x", SessionMarkers, uint64(id))
}

// sessionMarkersACL lets any session create its marker under
// SessionMarkers (whatever credentials it holds, whatever ACLs the
// ensemble has elsewhere) and anyone list them; nobody but the super user
// may delete one: a marker goes only with its session.
var sessionMarkersACL = []jute.ACL{{Perms: jute.PermRead | jute.PermCreate, ID: jute.Id{Scheme: "world", ID: "anyone"}}}

// sessionMarkerACL: a marker is readable by anyone and changed by nobody.
var sessionMarkerACL = []jute.ACL{{Perms: jute.PermRead, ID: jute.Id{Scheme: "world", ID: "anyone"}}}

// SessionMarkerCreates are the creates that mark session id on its
// ensemble, in order: with parents, HeartbeatRoot (open, as the
// replicator creates it) and SessionMarkers first (NODEEXISTS on them is
// expected and harmless), then the marker itself (ephemeral). Sent first
// on the session, pipelined: nothing waits for them.
func SessionMarkerCreates(id int64, parents bool) []*jute.CreateRequest {
	var out []*jute.CreateRequest
	if parents {
		out = append(out,
			&jute.CreateRequest{Path: HeartbeatRoot, Data: []byte{}, ACL: zkclient.OpenACL, Flags: jute.FlagPersistent},
			&jute.CreateRequest{Path: SessionMarkers, Data: []byte{}, ACL: sessionMarkersACL, Flags: jute.FlagPersistent})
	}
	return append(out, &jute.CreateRequest{Path: SessionMarker(id), Data: []byte{}, ACL: sessionMarkerACL, Flags: jute.FlagEphemeral})
}

// isSessionMarker reports whether p is SessionMarkers or a marker.
func isSessionMarker(p string) bool {
	return p == SessionMarkers || strings.HasPrefix(p, SessionMarkers+"/")
}

// withoutMarkers drops the session markers from nodes read by ReadTree:
// SessionMarkers itself and its name among HeartbeatRoot's children.
func withoutMarkers(nodes []*Node) []*Node {
	out := nodes[:0]
	for _, n := range nodes {
		if isSessionMarker(n.Path) {
			continue
		}
		if n.Path == HeartbeatRoot {
			kids := make([]string, 0, len(n.Children))
			for _, k := range n.Children {
				if HeartbeatRoot+"/"+k != SessionMarkers {
					kids = append(kids, k)
				}
			}
			n.Children = kids
		}
		out = append(out, n)
	}
	return out
}

// ensureSessionMarkers creates SessionMarkers (and HeartbeatRoot) on c if
// missing, so proxies whose sessions may not create under the root (a
// restrictive ACL on "/") find it: the replicator's credentials may. A
// refusal is logged, not fatal: the proxies create it themselves where
// they may, and say so loudly where they may not.
func (c *Continuous) ensureSessionMarkers(ctx context.Context, side Side) error {
	for _, r := range SessionMarkerCreates(0, true)[:2] {
		_, err := c.conns[side].Create(ctx, r.Path, r.Data, r.ACL, r.Flags)
		switch jute.CodeOf(err) {
		case jute.CodeOK, jute.CodeNodeExists:
		case jute.CodeNoAuth:
			c.log.Warn("cannot create the proxies' session markers' parent: the replicator's credentials may not create it; the proxies try with theirs",
				"side", side, "path", r.Path, "hint", "create "+SessionMarkers+" with ACL world:anyone:rc by hand (zkCli: create "+SessionMarkers+" \"\" world:anyone:rc)")
			return nil
		default:
			return fmt.Errorf("create %s on %s: %w", r.Path, side, err)
		}
	}
	return nil
}

// proxiedOwners returns, per side, the owners of the ephemerals in reads
// (other than the replicator's own writer) whose session is marked as a
// proxy's on that side. It reads each owner's marker on the side's writer
// connection, after the reads (so a marker committed before the ephemeral
// is seen: it never fails open), pipelined; owners found marked before
// are taken from the cache (a marker goes only with its session, and so do
// the session's ephemerals). Both sides are looked up whatever the primary
// (SetPrimary may change it before the round decides).
func (c *Continuous) proxiedOwners(ctx context.Context, reads *[2][]read) ([2]map[int64]bool, error) {
	var out [2]map[int64]bool
	c.mu.Lock()
	var ask [2][]int64
	for _, side := range []Side{SideA, SideB} {
		out[side] = map[int64]bool{}
		for i := range reads[side] {
			r := &reads[side][i]
			owner := r.stat.EphemeralOwner
			if !c.foreignEphemeralLocked(side, r) {
				continue
			}
			if _, seen := out[side][owner]; seen {
				continue
			}
			marked := c.marked[side][owner]
			out[side][owner] = marked
			if !marked {
				ask[side] = append(ask[side], owner)
			}
		}
	}
	c.mu.Unlock()
	for _, side := range []Side{SideA, SideB} {
		if len(ask[side]) == 0 {
			continue
		}
		calls := make([]*zkclient.Call, len(ask[side]))
		for i, owner := range ask[side] {
			calls[i] = c.conns[side].Go(jute.OpExists, &jute.ExistsRequest{Path: SessionMarker(owner)}, &jute.ExistsResponse{})
		}
		for i, call := range calls {
			select {
			case <-call.Done:
			case <-ctx.Done():
				return out, ctx.Err()
			}
			switch jute.CodeOf(call.Err) {
			case jute.CodeOK:
				out[side][ask[side][i]] = true
			case jute.CodeNoNode:
			default:
				return out, fmt.Errorf("read the session marker of 0x%x on %s: %w", ask[side][i], side, call.Err)
			}
		}
		c.mu.Lock()
		for _, owner := range ask[side] {
			if out[side][owner] {
				c.marked[side][owner] = true
			}
		}
		c.mu.Unlock()
	}
	return out, nil
}
