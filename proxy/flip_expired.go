package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"time"

	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// A shadow session expired on the new primary between the drain and the
// swap (SPEC.md 4.10): its ephemerals went with it there, while the
// client's session on the old primary is alive and still owns them. The
// swap does not tell the client its session expired: it opens a new
// session on the new primary for it (the client keeps its id and
// password: the proxy maps them, 4.6), creates the client's ephemerals
// again on it with the names, data and ACLs the old primary holds under
// the client's live session, and moves the client onto it; its watches
// are re-armed by the flip's replay as for any session.

// errShadowExpired: the new primary expired the shadow session.
var errShadowExpired = errors.New("the new primary expired the shadow session")

// errExpiredInHold: the shadow's goroutine found its session expired while
// a flip held client requests; the swap opens the new one.
var errExpiredInHold = errors.New("shadow session expired while a flip holds")

// xidProxyEphemerals is the xid of the getEphemerals a flip sends on the
// old primary for a client whose shadow session expired.
const xidProxyEphemerals int32 = -21

// ephemeralsReply is the answer to that getEphemerals.
type ephemeralsReply struct {
	paths []string
	err   error
}

func decodeEphemerals(code jute.Code, d *jute.Decoder) ephemeralsReply {
	if code != jute.CodeOK {
		return ephemeralsReply{err: code.Err()}
	}
	var r jute.GetEphemeralsResponse
	if err := r.Decode(d); err != nil {
		return ephemeralsReply{err: err}
	}
	return ephemeralsReply{paths: r.Ephemerals}
}

// listEphemerals asks the old primary, on the client's serving connection
// ou (whose session owns them), for the session's ephemerals
// (getEphemerals, ZooKeeper 3.6+), by deadline. The relay's reader hands
// the answer over (upstream.go).
func (s *session) listEphemerals(ou *upstream, deadline time.Time) ([]string, error) {
	listed := make(chan ephemeralsReply, 1)
	var e jute.Encoder
	(&jute.RequestHeader{Xid: xidProxyEphemerals, Type: int32(jute.OpGetEphemerals)}).Encode(&e)
	(&jute.GetEphemeralsRequest{PrefixPath: "/"}).Encode(&e)
	s.omu.Lock()
	s.queue.push(pending{xid: xidProxyEphemerals, op: jute.OpGetEphemerals, kind: pendingInternal, start: time.Now(), arg: listed})
	s.omu.Unlock()
	if err := ou.write(e.Bytes(), true); err != nil {
		return nil, err
	}
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case r := <-listed:
		return r.paths, r.err
	case <-ou.done:
		return nil, errors.New("the old primary's connection was lost")
	case <-t.C:
		return nil, errSwapDeadline
	}
}

// reopenExpired opens a new session on the new primary for the client,
// creates its ephemerals there (read from the old primary, where owned
// owns them: the client's serving session until now), makes the shadow's
// ephemeral-owner the new session, and returns the session's connection
// with the new primary's zxid probed; nl takes the new session's id and
// password. Everything is done by deadline. An ephemeral that cannot be
// created again is reported loudly (WARN and
// flip_session_faults_total{what="ephemeral_not_moved"}) and the session
// moves without it: the client's session is kept, which matters more
// than one znode, and the operator is told which.
func (s *session) reopenExpired(sh *shadow, nl *leg, next *roles, owned int64, deadline time.Time, prevOff map[string]verOff) (*upstream, int64, error) {
	ctx, cancel := context.WithDeadline(s.srv.ctx, deadline)
	defer cancel()
	srv := s.srv
	auths := sh.authsCopy()
	// The client's ephemerals: those its session on the old primary owns
	// (getEphemerals on it: also those this proxy did not see created),
	// and those the mirror recorded for it.
	var listed []string
	if ou := s.serving().up.Load(); ou != nil {
		var err error
		if listed, err = s.listEphemerals(ou, deadline); err != nil {
			s.log.Info("flip: could not list the session's ephemerals on the old primary (getEphemerals needs ZooKeeper 3.6); creating again those the proxy recorded", "err", err)
		}
	}
	nodes, failed := s.readEphemerals(ctx, sh, next, owned, auths, listed)
	c, err := zkclient.Dial(ctx, next.upstream, zkclient.Options{SessionTimeout: s.timeout, DialTimeout: srv.cfg.DialTimeout,
		Dial: srv.cfg.Dial, Auth: auths, BufferSize: 4 << 10, EventBuffer: 16})
	if err != nil {
		return nil, 0, fmt.Errorf("shadow session 0x%x expired on %s and no new session could be opened there (the client will find its session expired): %w", nl.id, next.primary.Flag(), err)
	}
	marked := srv.markConn(c, nl, s.log) // first on the new session: session_marker.go
	failed = append(failed, s.createEphemerals(ctx, c, next, nodes, prevOff)...)
	marked(ctx)
	// The new session serves from here: the mapping the flip records names
	// it (nl), and the mirror's owner check uses it.
	oldID := nl.id
	nl.id, nl.passwd = c.SessionID(), c.Passwd()
	sh.mu.Lock()
	sh.owner = nl.id
	sh.mu.Unlock()
	srv.m.flipFaults.WithLabelValues("shadow_reopened").Inc()
	srv.m.flipFaults.WithLabelValues("ephemeral_not_moved").Add(float64(len(failed)))
	args := []any{"expired", fmt.Sprintf("0x%x", oldID), "new", fmt.Sprintf("0x%x", nl.id),
		"ephemerals", len(nodes), "not_moved", len(failed)}
	if len(failed) > 0 {
		s.log.Warn("flip: the shadow session had expired on the new primary; a new session serves the client, but some of its ephemerals could not be created again there",
			append(args, "paths", failed, "hint", "the client still holds its session: re-create those znodes through the proxy, or restart the client to re-register them")...)
	} else {
		s.log.Warn("flip: the shadow session had expired on the new primary; a new session serves the client, its ephemerals created again there", args...)
	}
	conn, err := detachBy(c, deadline)
	if err != nil {
		// Still resumable on a new connection (the session lives on).
		c.Abandon()
		return s.attachNew(nl, next, deadline)
	}
	return probeOn(nl, conn, c.Addr(), deadline)
}

// readEphemerals reads, on the old primary (next.secondary) with the
// client's credentials, every ephemeral listed or the shadow recorded for
// the client that is still owned by session owned. It returns them, and
// the paths it could not read.
func (s *session) readEphemerals(ctx context.Context, sh *shadow, next *roles, owned int64, auths []zkclient.Auth, listed []string) ([]ephemeralNode, []string) {
	sh.mu.Lock()
	paths := append(make([]string, 0, len(sh.ephemerals)+len(listed)), listed...)
	for p := range sh.ephemerals {
		paths = append(paths, p)
	}
	sh.mu.Unlock()
	if len(paths) == 0 {
		return nil, nil
	}
	slices.Sort(paths)
	paths = slices.Compact(paths)
	c, err := zkclient.Dial(ctx, next.secondary, zkclient.Options{DialTimeout: s.srv.cfg.DialTimeout, Dial: s.srv.cfg.Dial, Auth: auths})
	if err != nil {
		s.log.Warn("flip: cannot read the client's ephemerals on the old primary", "err", err)
		return nil, paths
	}
	defer s.srv.closeLater(c)
	var nodes []ephemeralNode
	var failed []string
	for _, p := range paths {
		n, err := readNode(ctx, c, p, true)
		switch {
		case err != nil:
			s.log.Warn("flip: cannot read one of the client's ephemerals on the old primary", "path", p, "err", err)
			failed = append(failed, p)
		case n.exists && n.stat.EphemeralOwner == owned:
			nodes = append(nodes, ephemeralNode{path: p, data: n.data, acl: n.acl, stat: n.stat})
		}
	}
	return nodes, failed
}

// ephemeralNode is one of the client's ephemerals as the old primary holds
// it.
type ephemeralNode struct {
	path string
	data []byte
	acl  []jute.ACL
	stat jute.Stat
}

// createEphemerals creates nodes as ephemerals of c's session on the new
// primary, each in a multi behind the check of the new primary's fence,
// all pipelined. The names are the old primary's, sequential ones
// included (created by their full name, as the mirror does). A created
// znode starts at version 0 there: its versions are translated from the
// old primary's as the flip's version read does for every other path
// (SPEC.md 4.10, hard problem 5), with prevOff the offsets before the
// flip. It returns the paths not created.
func (s *session) createEphemerals(ctx context.Context, c *zkclient.Conn, next *roles, nodes []ephemeralNode, prevOff map[string]verOff) []string {
	check := zkclient.MultiOp{Op: jute.OpCheck, Req: &jute.CheckVersionRequest{Path: s.srv.cfg.FencePath, Version: next.fence[next.primary.Index()]}}
	calls := make([]*zkclient.Call, len(nodes))
	stats := make([]*zkclient.Call, len(nodes))
	for i, n := range nodes {
		calls[i] = c.GoMulti([]zkclient.MultiOp{check, {Op: jute.OpCreate, Req: &jute.CreateRequest{Path: n.path, Data: n.data, ACL: n.acl, Flags: jute.FlagEphemeral}}})
		stats[i] = c.Go(jute.OpExists, &jute.ExistsRequest{Path: n.path}, &jute.ExistsResponse{}) // FIFO: after its create
	}
	var failed []string
	for i, call := range calls {
		select {
		case <-call.Done:
			<-stats[i].Done
		case <-ctx.Done():
			failed = append(failed, nodes[i].path)
			continue
		}
		if at, err := zkclient.MultiErr(call); err != nil {
			what := err
			if at == 0 {
				what = fmt.Errorf("the new primary's fence moved on: %w", errFenced)
			}
			s.log.Warn("flip: cannot create one of the client's ephemerals again on the new primary", "path", nodes[i].path, "err", what)
			failed = append(failed, nodes[i].path)
			continue
		}
		if stats[i].Err == nil && s.srv.view.on {
			o, bst := prevOff[nodes[i].path], stats[i].Resp.(*jute.ExistsResponse).Stat
			ast := nodes[i].stat
			if o.czxid != ast.Czxid {
				o = verOff{}
			}
			d := verOff{v: bst.Version - ast.Version + o.v, c: bst.Cversion - ast.Cversion + o.c, a: bst.Aversion - ast.Aversion + o.a, czxid: bst.Czxid}
			if d.v != 0 || d.c != 0 || d.a != 0 {
				s.srv.view.keep(nodes[i].path, d)
			}
		}
	}
	return failed
}

// detachBy takes c's connection over (Detach), retrying while a ping of
// its own is unanswered, until deadline.
func detachBy(c *zkclient.Conn, deadline time.Time) (net.Conn, error) {
	for {
		nc, err := c.Detach()
		if !errors.Is(err, zkclient.ErrBusy) || !time.Now().Before(deadline) {
			return nc, err
		}
		time.Sleep(time.Millisecond)
	}
}
