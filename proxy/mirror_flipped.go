package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path"
	"time"

	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/replicator"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// The repair of a stranded write onto the new primary (SPEC.md 4.9, "A
// write stranded by a missed flip"). Y is the primary now, X the primary
// the write was acknowledged on (the secondary now). The flip that made Y
// primary raised Y's fence (a setData): when Y's fence is at the version
// after the one the proxy knew at the write's epoch, exactly that flip
// raised it since, and the fence's mzxid F is the flip on Y's own clock.
// Every write by a client of Y after the flip has a zxid above F; every
// change Y saw before it came from mirrors and the replicator, which only
// ever copy X's state. So, for path p:
//
//   - X and Y equal: nothing to do.
//   - Y's node changed after the flip (mzxid above F; for a delete, its
//     children too: pzxid above F): Y keeps its state, the difference is
//     reported (flip_conflict), and X follows Y (the ordinary mirror).
//   - Y's node unchanged since the flip: it takes X's data (setData at the
//     version just read) or is deleted (at that version).
//   - Y has no node p: if p's parent's children are unchanged since the
//     flip (pzxid at most F), p was never there after the flip: it is
//     created as on X. If they changed, p may have been created and
//     deleted on Y after the flip, or been mirrored before it and deleted
//     after it; either way a live proxy's mirror copies that deletion to X
//     within its lag, and its copy of a create changes X's node after X's
//     own flip (mzxid above X's fence's). So p is created only if X's node
//     is unchanged since X's fence was raised and still so after
//     flipSettle; otherwise the deletion stands (flip_conflict).
//
// Every write to Y is conditional (the version just read, or a create
// that fails if the node appeared) and carries the check of Y's fence at
// the proxy's epoch, so a later flip or a concurrent client change makes
// it fail and the path is judged again. ACLs are never copied (a setACL
// changes no zxid, so a change after the flip cannot be told from an old
// one): a different ACL is reported. Ephemerals are not copied either
// (only the owner's session can hold one): reported. When the proxy did
// not know Y's fence version at the write's epoch, or more than one flip
// raised it since, the flip's zxid is unknown: nothing is written and a
// difference is reported (flip_ambiguous) for the operator.

// flipSettle is how long the repair of an absent node waits for a live
// proxy's mirror of a deletion on the new primary to reach the old one.
var flipSettle = time.Second

// maxFlipRounds bounds the read-judge-write rounds for one stranded path.
const maxFlipRounds = 10

// flipVerdict is what the repair of one path concluded.
type flipVerdict int

const (
	flipEqual     flipVerdict = iota // the new primary holds the old primary's state (or now does)
	flipConflict                     // changed on the new primary after the flip: kept there
	flipAmbiguous                    // cannot be judged or repaired safely (see why): left for the operator
	flipWait                         // cannot judge now (fence version unknown, a later flip): stranded again
)

// errFlipConflict carries why a stranded path keeps the new primary's state.
type errFlipConflict struct{ why string }

func (e errFlipConflict) Error() string { return e.why }

// repairFlipped repairs items onto the primary of r, one connection pair
// per credential set. It returns the items to keep stranded.
func (s *Server) repairFlipped(r *roles, items []strandItem) []strandItem {
	groups := map[string][]strandItem{}
	var order []string
	for _, it := range items {
		k := credKey(it.auths)
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], it)
	}
	var again []strandItem
	for _, k := range order {
		again = append(again, s.repairFlippedGroup(r, groups[k])...)
	}
	return again
}

func (s *Server) repairFlippedGroup(r *roles, items []strandItem) []strandItem {
	ctx, cancel := context.WithTimeout(s.ctx, 30*time.Second)
	defer cancel()
	opts := zkclient.Options{DialTimeout: s.cfg.DialTimeout, Dial: s.cfg.Dial, Auth: items[0].auths, SessionTimeout: restoreTimeout}
	pc, err := zkclient.Dial(ctx, r.upstream, opts)
	if err != nil {
		s.logs.warn(s.log, "flip_repair", "cannot reach the primary to repair writes a missed flip stranded; retrying", "paths", len(items), "err", err)
		return items
	}
	defer pc.Close()
	xc, err := zkclient.Dial(ctx, r.secondary, opts)
	if err != nil {
		s.logs.warn(s.log, "flip_repair", "cannot reach the old primary to repair writes a missed flip stranded; retrying", "paths", len(items), "err", err)
		return items
	}
	defer xc.Close()
	var again []strandItem
	for i, it := range items {
		if s.roles.Load() != r {
			return append(again, items[i:]...) // a flip meanwhile: judge again under the new roles
		}
		v, err := s.repairOne(ctx, r, pc, xc, it)
		s.reportFlipped(it, v, err)
		if v == flipWait {
			again = append(again, it)
		}
	}
	return again
}

// reportFlipped counts and logs the outcome of a stranded path's repair.
func (s *Server) reportFlipped(it strandItem, v flipVerdict, err error) {
	switch v {
	case flipEqual:
		s.m.mirrored.Inc()
		s.log.Info("a write a missed flip stranded is on the new primary", "path", it.path, "epoch", it.from.epoch, "written_on", it.from.primary.Flag())
	case flipConflict:
		s.m.mirrorFailures.WithLabelValues("flip_conflict").Inc()
		// Not rate-limited: each line names a path an operator must see.
		s.log.Warn("CONFLICT: a write acknowledged on the old primary before a flip this proxy missed may not have been mirrored, and the new primary's clients changed the znode after the flip: their (later) state is kept, the old primary's is discarded",
			"path", it.path, "epoch", it.from.epoch, "written_on", it.from.primary.Flag(), "why", errString(err),
			"hint", "check the znode's owner application; zkmigrate_proxy_mirror_failures_total{reason=\"flip_conflict\"} counts these")
		s.requeueStranded([]strandItem{it}) // the old primary, now the secondary, follows the new one
	case flipAmbiguous:
		s.m.mirrorFailures.WithLabelValues("flip_ambiguous").Inc()
		s.log.Warn("a write acknowledged on the old primary before a flip this proxy missed differs on the new primary, and the proxy cannot repair it safely (see why): left as it is on both",
			"path", it.path, "epoch", it.from.epoch, "written_on", it.from.primary.Flag(), "why", errString(err),
			"hint", "compare the znode on both ensembles (`zk-migrate validate`) and copy the right state by hand")
	case flipWait:
		if err != nil {
			s.logs.warn(s.log, "flip_repair", "could not repair a write a missed flip stranded; retrying", "path", it.path, "err", err)
		}
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// flipMark is the flip that made the primary primary, on both clocks.
type flipMark struct {
	onY, onX int64 // the mzxid of the primary's (Y) and the old primary's (X) fences
}

// readFlipMark reads both fences' stats; exact reports whether Y's fence
// was raised exactly once since from (so its mzxid is that flip's).
func (s *Server) readFlipMark(ctx context.Context, pc, xc *zkclient.Conn, from origin) (flipMark, bool, error) {
	stat := func(c *zkclient.Conn) (jute.Stat, error) {
		if err := c.Sync(ctx, s.cfg.FencePath); err != nil {
			return jute.Stat{}, fmt.Errorf("sync the fence: %w", err)
		}
		st, err := c.Exists(ctx, s.cfg.FencePath)
		if err != nil {
			return jute.Stat{}, fmt.Errorf("read the fence: %w", err)
		}
		return st, nil
	}
	ys, err := stat(pc)
	if err != nil {
		return flipMark{}, false, err
	}
	xs, err := stat(xc)
	if err != nil {
		return flipMark{}, false, err
	}
	return flipMark{onY: ys.Mzxid, onX: xs.Mzxid}, from.fence >= 0 && ys.Version == from.fence+1, nil
}

// repairOne judges and repairs one stranded path (the rule above).
func (s *Server) repairOne(ctx context.Context, r *roles, pc, xc *zkclient.Conn, it strandItem) (flipVerdict, error) {
	if !r.fenceKnown[r.primary.Index()] {
		return flipWait, nil // the fence watcher learns it within a lease round
	}
	mark, exact, err := s.readFlipMark(ctx, pc, xc, it.from)
	if err != nil {
		return flipWait, err
	}
	for round := 0; round < maxFlipRounds; round++ {
		y, err := readNode(ctx, pc, it.path, true)
		var x node
		if err == nil {
			x, err = readNode(ctx, xc, it.path, true)
		}
		if jute.CodeOf(err) == jute.CodeNoAuth {
			return flipAmbiguous, fmt.Errorf("unreadable without the writer's credentials (not recorded in --state-dir): %w", err)
		}
		if err != nil {
			return flipWait, fmt.Errorf("read the path on both ensembles: %w", err)
		}
		v, again, werr := s.judge(ctx, r, pc, xc, it.path, x, y, mark, exact)
		if !again {
			return v, werr
		}
	}
	return flipAmbiguous, fmt.Errorf("%w (%d rounds)", errMirrorGaveUp, maxFlipRounds)
}

// judge applies the rule to p, read as x on the old primary and y on the
// new one; again asks for another round (a write was made, or raced).
func (s *Server) judge(ctx context.Context, r *roles, pc, xc *zkclient.Conn, p string, x, y node, mark flipMark, exact bool) (v flipVerdict, again bool, err error) {
	if sameState(x, y) {
		return flipEqual, false, nil
	}
	if !exact {
		return flipAmbiguous, false, errors.New("the new primary's fence was raised more than once since the write (or its version then is unknown): the flip's zxid is unknown")
	}
	conflict := func(why string) (flipVerdict, bool, error) { return flipConflict, false, errFlipConflict{why} }
	ambiguous := func(why string) (flipVerdict, bool, error) { return flipAmbiguous, false, errors.New(why) }
	var werr error
	switch {
	case y.exists && (y.stat.Mzxid > mark.onY || (!x.exists && y.stat.Pzxid > mark.onY)):
		return conflict(fmt.Sprintf("changed on the new primary after the flip (mzxid 0x%x, pzxid 0x%x, flip 0x%x)", y.stat.Mzxid, y.stat.Pzxid, mark.onY))
	case x.exists && kindOf(x.stat.EphemeralOwner) == kindEphemeral, y.exists && kindOf(y.stat.EphemeralOwner) == kindEphemeral:
		return ambiguous("an ephemeral: only its owner's session may hold it")
	case x.exists && y.exists && kindOf(x.stat.EphemeralOwner) != kindOf(y.stat.EphemeralOwner):
		return ambiguous("another kind of znode on each ensemble")
	case x.exists && y.exists && !bytes.Equal(x.data, y.data):
		_, werr = s.primaryMulti(ctx, r, pc, zkclient.MultiOp{Op: jute.OpSetData, Req: &jute.SetDataRequest{Path: p, Data: x.data, Version: y.stat.Version}})
	case x.exists && y.exists:
		return ambiguous("the ACL differs (ACLs are not repaired: a setACL leaves no zxid to date it)")
	case y.exists:
		werr = s.primaryDelete(ctx, r, pc, p, y.stat.Version)
	case replicator.RedactedACL(x.acl):
		return flipAmbiguous, false, errACLHidden
	default:
		if _, err := pc.Exists(ctx, path.Dir(p)); jute.CodeOf(err) == jute.CodeNoNode {
			return ambiguous("its parent is missing on the new primary")
		}
		ok, why, err := s.mayCreate(ctx, pc, xc, p, x, mark)
		if err != nil {
			return flipWait, false, err
		}
		if !ok {
			return conflict(why)
		}
		werr = s.primaryCreate(ctx, r, pc, p, x)
	}
	switch code := jute.CodeOf(werr); {
	case code == jute.CodeOK, code == jute.CodeNoNode, code == jute.CodeNodeExists, code == jute.CodeBadVersion:
		return flipWait, true, nil // done, or raced with a client of the new primary: judge again
	case code == jute.CodeNotEmpty:
		return conflict("children added on the new primary")
	}
	return flipWait, false, werr // errFenced: a later flip, judged again under it
}

// mayCreate decides whether p, absent on the new primary and present on
// the old one as x, is created there (the absent case of the rule).
func (s *Server) mayCreate(ctx context.Context, pc, xc *zkclient.Conn, p string, x node, mark flipMark) (bool, string, error) {
	parent := path.Dir(p)
	pst, err := pc.Exists(ctx, parent)
	if err != nil {
		return false, "", fmt.Errorf("read the parent on the new primary: %w", err)
	}
	if pst.Pzxid <= mark.onY {
		return true, "", nil // no child created or deleted there since the flip
	}
	if x.stat.Mzxid > mark.onX {
		return false, fmt.Sprintf("the old primary's node changed after its flip (a live proxy mirrored the new primary's, mzxid 0x%x > 0x%x)", x.stat.Mzxid, mark.onX), nil
	}
	// A deletion on the new primary after the flip reaches the old one
	// through a live proxy's mirror: give it the time to.
	select {
	case <-ctx.Done():
		return false, "", ctx.Err()
	case <-time.After(flipSettle):
	}
	again, err := readNode(ctx, xc, p, true)
	if err != nil {
		return false, "", fmt.Errorf("read the old primary again: %w", err)
	}
	if !again.exists || again.stat.Mzxid != x.stat.Mzxid {
		return false, "deleted or changed on the old primary while waiting (a live proxy mirrored the new primary's state)", nil
	}
	return true, "", nil
}

// sameState reports whether the old primary's x and the new primary's y
// hold the same state: existence, data, ACL and kind.
func sameState(x, y node) bool {
	if x.exists != y.exists {
		return false
	}
	if !x.exists {
		return true
	}
	return kindOf(x.stat.EphemeralOwner) == kindOf(y.stat.EphemeralOwner) && bytes.Equal(x.data, y.data) && aclEqual(x.acl, y.acl)
}

// primaryMulti runs ops on the primary through c after the check of the
// primary's fence at the proxy's epoch (r): a refused check is errFenced.
func (s *Server) primaryMulti(ctx context.Context, r *roles, c *zkclient.Conn, ops ...zkclient.MultiOp) (*jute.MultiResponse, error) {
	return fenceCheckedMulti(ctx, c, s.cfg.FencePath, r.fence[r.primary.Index()], ops...)
}

func (s *Server) primaryDelete(ctx context.Context, r *roles, c *zkclient.Conn, p string, v int32) error {
	_, err := s.primaryMulti(ctx, r, c, zkclient.MultiOp{Op: jute.OpDelete, Req: &jute.DeleteRequest{Path: p, Version: v}})
	return err
}

// primaryCreate creates p on the primary as the old primary's x (a
// persistent, container or TTL node; never an ephemeral).
func (s *Server) primaryCreate(ctx context.Context, r *roles, c *zkclient.Conn, p string, x node) error {
	op, req := jute.OpCreate, jute.Record(&jute.CreateRequest{Path: p, Data: x.data, ACL: x.acl})
	switch kindOf(x.stat.EphemeralOwner) {
	case kindContainer:
		op = jute.OpCreateContainer
		req.(*jute.CreateRequest).Flags = jute.FlagContainer
	case kindTTL:
		op, req = jute.OpCreateTTL, &jute.CreateTTLRequest{Path: p, Data: x.data, ACL: x.acl, Flags: jute.FlagPersistentWithTTL, TTL: ttlOf(x.stat.EphemeralOwner)}
	}
	_, err := s.primaryMulti(ctx, r, c, zkclient.MultiOp{Op: op, Req: req})
	return err
}
