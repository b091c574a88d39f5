package proxy

import (
	"context"
	"fmt"
	"path"

	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// What no live proxy will mirror (SPEC.md 4.10, "A write no live proxy
// mirrors"). At a swap under the control plane's barrier every live
// proxy holds, drained: no mirror write of theirs is pending, and the
// fences record the epoch. A path shown to this proxy's clients that then
// exists on the old primary only, or on the new primary only, differs by
// a write nobody will copy: one committed on the old primary through a
// proxy that died before mirroring it (its recorded backlog is repaired
// only after it restarts and catches up, by which time the new primary's
// clients may have changed the znode: the flip scenario's Illegal history,
// a register deleted through the SIGKILLed proxy and back on the new
// primary). The swap makes the new primary like the old for those paths,
// before it reads their versions: a znode the old primary no longer has
// is deleted on the new one, one only the old has is created there with
// its data and ACL. Only where the new primary's copy predates the raise
// (its czxid and mzxid, or the parent's pzxid for a missing one before
// this proxy's repairs, below the mzxid of the new primary's fence):
// anything later is a client's write through a proxy already on the new
// primary, never undone (a sibling repaired first by another proxy of
// the barrier leaves a create to the dead proxy's own repair, as before).
// Ephemerals are left to their sessions, data that differs on both to
// the replicator (not detectable from the stats). Every proxy of the
// barrier does the same (a delete or a create already done is
// NONODE/NODEEXISTS), and each reads the result: the same offsets.

// convergeForSwap repairs, through nc (writes checked against the new
// primary's fence at version fv), the paths of paths that exist on one
// side only (olds on the old primary through oc, news on the new one) and
// re-reads their stats into olds and news. raisedAt is the mzxid of the
// new primary's fence.
func (s *Server) convergeForSwap(ctx context.Context, oc, nc *zkclient.Conn, paths []string, olds, news []statRead, fv int32, raisedAt int64) {
	// The parents of the znodes to create, as they were before this
	// proxy's own repairs change them.
	parents := map[string]bool{} // parent -> unchanged since the raise
	for i, p := range paths {
		if jute.CodeOf(news[i].err) == jute.CodeNoNode && olds[i].err == nil && olds[i].st.EphemeralOwner == 0 {
			if _, ok := parents[path.Dir(p)]; !ok {
				st, err := nc.Exists(ctx, path.Dir(p))
				parents[path.Dir(p)] = err == nil && st.Pzxid < raisedAt
			}
		}
	}
	var fixed []int
	for i, p := range paths {
		so, sn := olds[i], news[i]
		goneOld, goneNew := jute.CodeOf(so.err) == jute.CodeNoNode, jute.CodeOf(sn.err) == jute.CodeNoNode
		var err error
		switch {
		case goneOld && sn.err == nil && sn.st.EphemeralOwner == 0 && sn.st.Czxid < raisedAt && sn.st.Mzxid < raisedAt && sn.st.NumChildren == 0:
			_, err = fenceCheckedMulti(ctx, nc, s.cfg.FencePath, fv,
				zkclient.MultiOp{Op: jute.OpDelete, Req: &jute.DeleteRequest{Path: p, Version: sn.st.Version}})
			if jute.CodeOf(err) == jute.CodeNoNode {
				err = nil // another proxy of the barrier did
			}
		case goneNew && so.err == nil && so.st.EphemeralOwner == 0:
			err = errNotConverged // no parent there, or a child created or deleted since the raise
			if parents[path.Dir(p)] {
				err = s.createLikeOld(ctx, oc, nc, p, fv)
			}
		default:
			continue
		}
		if err == errNotConverged {
			continue
		}
		if err != nil {
			s.log.Warn("flip: a path shown to clients exists on one ensemble only and could not be made alike; its clients may see it differ after the swap",
				"path", p, "old_primary_has_it", !goneOld, "err", err, "hint", "zk-migrate validate names the difference; the replicator repairs it on a migration path")
			continue
		}
		fixed = append(fixed, i)
		s.m.flipFaults.WithLabelValues("converged").Inc()
		s.log.Warn("flip: a path shown to clients existed on one ensemble only at the swap (a write no live proxy mirrored: committed through a proxy that died before mirroring it); made the new primary like the old",
			"path", p, "old_primary_has_it", !goneOld)
	}
	if len(fixed) == 0 {
		return
	}
	again := make([]string, len(fixed))
	for j, i := range fixed {
		again[j] = paths[i]
	}
	o, oerr := readStats(ctx, oc, again)
	n, nerr := readStats(ctx, nc, again)
	if oerr != nil || nerr != nil {
		return // the version read fails on the context as well
	}
	for j, i := range fixed {
		olds[i], news[i] = o[j], n[j]
	}
}

// errNotConverged: the path is left as it is (a later write on the new
// primary, or nothing to copy).
var errNotConverged = fmt.Errorf("left as it is")

// createLikeOld creates p on the new primary (nc) with the old primary's
// (oc) data and ACL.
func (s *Server) createLikeOld(ctx context.Context, oc, nc *zkclient.Conn, p string, fv int32) error {
	data, st, err := oc.Get(ctx, p)
	if jute.CodeOf(err) == jute.CodeNoNode {
		return errNotConverged
	}
	if err != nil {
		return fmt.Errorf("read it on the old primary: %w", err)
	}
	if st.EphemeralOwner != 0 {
		return errNotConverged
	}
	acl, _, err := oc.GetACL(ctx, p)
	if err != nil {
		return fmt.Errorf("read its ACL on the old primary: %w", err)
	}
	_, err = fenceCheckedMulti(ctx, nc, s.cfg.FencePath, fv,
		zkclient.MultiOp{Op: jute.OpCreate, Req: &jute.CreateRequest{Path: p, Data: data, ACL: acl}})
	if jute.CodeOf(err) == jute.CodeNodeExists {
		return nil // another proxy of the barrier did
	}
	return err
}
