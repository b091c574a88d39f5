package proxy

import (
	"context"
	"fmt"
	"sync"

	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// The client's view across flips (SPEC.md 4.10): versions a client read
// before a flip stay valid after it. For every path the proxy has relayed
// a Stat of (statPaths, bounded), the flip reads the znode's stat on both
// ensembles once the mirror has drained and records, per path, the
// difference between the new primary's version, cversion and aversion and
// what the client saw. Requests carrying a version are translated into the
// serving ensemble's numbering and every Stat relayed is translated back,
// so a conditional write succeeds after the flip exactly when it would
// have on the old primary.

// maxStatPaths bounds the paths whose versions the proxy translates at a
// flip; a path beyond keeps the new primary's own versions (counted).
const maxStatPaths = 100000

// rebaseParallel bounds the stat reads in flight on each ensemble at a
// flip.
const rebaseParallel = 256

// verOff is what is subtracted from a serving ensemble's versions of one
// znode before the client sees them. It holds for one incarnation of the
// znode, the one created at czxid on the serving ensemble: a znode deleted
// and created again starts at version 0 on both ensembles, so a later
// incarnation has no offset (toClient and forget drop it).
type verOff struct {
	v, c, a int32
	czxid   int64
}

// view is the server-wide version translation, replaced at each flip.
type view struct {
	// on is set before the server serves, in two-ensemble mode only: a
	// proxy of one ensemble never flips, so its hot path records nothing.
	on    bool
	mu    sync.RWMutex
	seen  map[string]struct{} // paths whose Stat a client has been shown
	off   map[string]verOff   // since the last flip
	extra int                 // paths not recorded (beyond maxStatPaths)
	// agreed: off is the barrier's numbering for the epoch held (Offsets.Agreed).
	agreed bool
	// dirty, if not nil, is poked when a path is first recorded, so the
	// version file in --state-dir records it soon (flip_state.go).
	dirty chan struct{}
	// settle asks settleLoop to take an agreed peer's offsets
	// (view_peers.go); nil without Config.PeerOffsets.
	settle chan struct{}
}

func (v *view) note(path string) {
	if !v.on || path == "" {
		return
	}
	v.mu.RLock() // the hot path: a path shown before
	_, known := v.seen[path]
	v.mu.RUnlock()
	if known {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.seen == nil {
		v.seen = map[string]struct{}{}
	}
	if _, ok := v.seen[path]; ok {
		return
	}
	if len(v.seen) >= maxStatPaths {
		v.extra++
		return
	}
	v.seen[path] = struct{}{}
	select { // the version file records it soon (flip_state.go)
	case v.dirty <- struct{}{}:
	default:
	}
}

func (v *view) offset(path string) (verOff, bool) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	o, ok := v.off[path]
	return o, ok
}

// offsets is the offsets in force (not to be changed: a flip replaces the
// map as a whole).
func (v *view) offsets() map[string]verOff {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.off
}

// keep puts o in force for path (a znode a flip created again on the new
// primary, flip_expired.go).
func (v *view) keep(path string, o verOff) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.off == nil {
		v.off = map[string]verOff{}
	}
	v.off[path] = o
}

// forget drops path's offset if it belongs to the incarnation created at
// czxid (0: whatever incarnation): that znode is gone.
func (v *view) forget(path string, czxid int64) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if o, ok := v.off[path]; ok && (czxid == 0 || o.czxid == czxid) {
		delete(v.off, path)
	}
}

// written notes a write the serving ensemble acknowledged: a delete or a
// create of path ends the incarnation its offset was for.
func (v *view) written(op jute.Op, path string) {
	if !v.on {
		return
	}
	switch op {
	case jute.OpDelete, jute.OpCreate, jute.OpCreate2, jute.OpCreateTTL, jute.OpCreateContainer:
		if _, ok := v.offset(path); ok {
			v.forget(path, 0)
		}
	}
}

// setAgreed records whether the offsets in force are the barrier's
// numbering for the epoch held (Offsets.Agreed).
func (v *view) setAgreed(agreed bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.agreed = agreed
}

func (v *view) active() bool {
	if !v.on {
		return false
	}
	v.mu.RLock()
	defer v.mu.RUnlock()
	return len(v.off) > 0
}

// rebase computes the offsets for a flip from old to next: for each path
// shown to a client, (stat on next) - (stat on old) + (the old offset), so
// the client keeps seeing the versions it saw. Called with client requests
// held and the mirror drained, on connections to the old (oc) and the
// next (nc) primary that have been synced with their leaders since the
// drain (the fence reads before it sync them): a read on a connection
// follows its sync, so no sync is sent again here. peer, if not nil, is a
// peer's offsets at this flip's epoch (a one-shot flip catching up with a
// barrier): they win (adopt), and the peer's paths this proxy was not
// shown are taken too.
func (s *Server) rebase(ctx context.Context, oc, nc *zkclient.Conn, peer map[string]PathOffset) error {
	paths, prev := s.view.shown()
	if len(paths) == 0 && len(peer) == 0 {
		return nil
	}
	// Both ensembles at once, each pipelined (up to rebaseParallel reads
	// in flight on each connection): the pause pays about one round trip
	// per rebaseParallel paths, not two per path.
	var olds, news []statRead
	var errO, errN error
	done := make(chan struct{})
	go func() {
		defer close(done)
		olds, errO = readStats(ctx, oc, paths)
	}()
	news, errN = readStats(ctx, nc, paths)
	<-done
	if err := firstErr(errO, errN); err != nil {
		return err
	}
	next, err := rebased(paths, prev, olds, news, peer)
	if err != nil {
		return err
	}
	s.view.rebaseTo(next, peer)
	return nil
}

// shown returns the paths whose Stat a client has been shown and the
// offsets in force.
func (v *view) shown() ([]string, map[string]verOff) {
	v.mu.Lock()
	defer v.mu.Unlock()
	paths := make([]string, 0, len(v.seen))
	for p := range v.seen {
		paths = append(paths, p)
	}
	return paths, v.off
}

// rebaseTo puts the offsets of a flip in force, with those of peer's
// paths this proxy was not shown.
func (v *view) rebaseTo(next map[string]verOff, peer map[string]PathOffset) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for p, o := range peer {
		if _, own := v.seen[p]; own || o == (PathOffset{}) || len(v.seen) >= maxStatPaths {
			continue
		}
		// Shown to the peer's clients only: this proxy's clients see the
		// same numbers if they read it (toClient drops the offset if the
		// znode is another by then).
		if v.seen == nil {
			v.seen = map[string]struct{}{}
		}
		v.seen[p] = struct{}{}
		next[p] = verOff{v: o.V, c: o.C, a: o.A, czxid: o.Czxid}
	}
	v.off = next
}

// rebased computes the offsets after a flip from prev, the offsets before
// it, and the stats of paths read on the old and the new primary.
func rebased(paths []string, prev map[string]verOff, olds, news []statRead, peer map[string]PathOffset) (map[string]verOff, error) {
	next := map[string]verOff{}
	for i, p := range paths {
		so, sn := olds[i], news[i]
		if so.err != nil || sn.err != nil {
			if jute.CodeOf(so.err) != jute.CodeNoNode && jute.CodeOf(sn.err) != jute.CodeNoNode {
				return nil, fmt.Errorf("read the stat of %s: %w", p, firstErr(so.err, sn.err))
			}
			continue // gone on either side: nothing to translate
		}
		o := prev[p]
		if o.czxid != so.st.Czxid {
			o = verOff{} // recorded for an earlier incarnation, gone since
		}
		d := verOff{v: sn.st.Version - so.st.Version + o.v, c: sn.st.Cversion - so.st.Cversion + o.c, a: sn.st.Aversion - so.st.Aversion + o.a}
		if d != (verOff{}) {
			d.czxid = sn.st.Czxid
		}
		if d = adopt(peer, p, sn.st.Czxid, d); d != (verOff{}) {
			next[p] = d
		}
	}
	return next, nil
}

// statRead is one path's stat, or the error reading it.
type statRead struct {
	st  jute.Stat
	err error
}

// readStats reads the stat of every path on c, up to rebaseParallel
// requests in flight; an error is returned only when ctx ends.
func readStats(ctx context.Context, c *zkclient.Conn, paths []string) ([]statRead, error) {
	out := make([]statRead, len(paths))
	resps := make([]jute.ExistsResponse, len(paths))
	calls := make([]*zkclient.Call, len(paths))
	wait := func(i int) error {
		select {
		case <-calls[i].Done:
			out[i] = statRead{st: resps[i].Stat, err: calls[i].Err}
			return nil
		case <-ctx.Done():
			return fmt.Errorf("read the stats of %d paths: %w", len(paths), ctx.Err())
		}
	}
	for i, p := range paths {
		if i >= rebaseParallel {
			if err := wait(i - rebaseParallel); err != nil {
				return nil, err
			}
		}
		calls[i] = c.Go(jute.OpExists, &jute.ExistsRequest{Path: p}, &resps[i])
	}
	for i := max(0, len(paths)-rebaseParallel); i < len(paths); i++ {
		if err := wait(i); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// statPathOf is the path whose Stat the reply to body carries ("" for none).
func statPathOf(body jute.Record) string {
	switch b := body.(type) {
	case *jute.GetDataRequest:
		return b.Path
	case *jute.ExistsRequest:
		return b.Path
	case *jute.SetDataRequest:
		return b.Path
	case *jute.GetChildren2Request:
		return b.Path
	case *jute.GetACLRequest:
		return b.Path
	case *jute.SetACLRequest:
		return b.Path
	}
	return ""
}

// toServing rewrites the versions of a request into the serving ensemble's
// numbering; it reports whether anything changed.
func (v *view) toServing(body jute.Record) bool {
	if !v.on {
		return false
	}
	changed := false
	fix := func(path string, ver *int32, pick func(verOff) int32) {
		if *ver < 0 {
			return // -1 matches any version
		}
		if o, ok := v.offset(path); ok && pick(o) != 0 {
			*ver += pick(o)
			if *ver == -1 {
				*ver = -2 // a version the client never saw must not become "any version"
			}
			changed = true
		}
	}
	data := func(o verOff) int32 { return o.v }
	acl := func(o verOff) int32 { return o.a }
	var one func(r jute.Record)
	one = func(r jute.Record) {
		switch b := r.(type) {
		case *jute.SetDataRequest:
			fix(b.Path, &b.Version, data)
		case *jute.DeleteRequest:
			fix(b.Path, &b.Version, data)
		case *jute.CheckVersionRequest:
			fix(b.Path, &b.Version, data)
		case *jute.SetACLRequest:
			fix(b.Path, &b.Version, acl)
		case *jute.MultiRequest:
			for _, op := range b.Ops {
				one(op.Req)
			}
		}
	}
	one(body)
	return changed
}

// toClient translates a Stat of path from the serving ensemble into the
// client's view: versions by the path's offsets, zxids by the session's.
func (v *view) toClient(path string, st *jute.Stat, zoff int64) {
	if o, ok := v.offset(path); ok && o.czxid != st.Czxid {
		v.forget(path, o.czxid) // a later incarnation: its own versions
	} else if ok {
		st.Version -= o.v
		st.Cversion -= o.c
		st.Aversion -= o.a
	}
	if zoff != 0 {
		for _, z := range []*int64{&st.Czxid, &st.Mzxid, &st.Pzxid} {
			if *z > 0 {
				*z += zoff
			}
		}
	}
}

// translateReply rewrites the Stats of a successful reply into the
// client's view; frame is returned unchanged when nothing applies.
func (s *session) translateReply(frame []byte, p *pending) []byte {
	zoff := s.zoff.Load()
	v := &s.srv.view
	if zoff == 0 && !v.active() {
		return frame
	}
	rep, err := jute.DecodeReply(frame, p.op)
	if err != nil || rep.Body == nil {
		return frame
	}
	switch b := rep.Body.(type) {
	case *jute.GetDataResponse:
		v.toClient(p.spath, &b.Stat, zoff)
	case *jute.ExistsResponse:
		v.toClient(p.spath, &b.Stat, zoff)
	case *jute.SetDataResponse:
		v.toClient(p.spath, &b.Stat, zoff)
	case *jute.GetChildren2Response:
		v.toClient(p.spath, &b.Stat, zoff)
	case *jute.GetACLResponse:
		v.toClient(p.spath, &b.Stat, zoff)
	case *jute.SetACLResponse:
		v.toClient(p.spath, &b.Stat, zoff)
	case *jute.Create2Response:
		v.toClient(b.Path, &b.Stat, zoff)
	case *jute.MultiResponse:
		for i := range b.Results {
			switch r := b.Results[i].Resp.(type) {
			case *jute.SetDataResponse:
				if i < len(p.mpaths) {
					v.toClient(p.mpaths[i], &r.Stat, zoff)
				}
			case *jute.Create2Response:
				v.toClient(r.Path, &r.Stat, zoff)
			}
		}
	default:
		return frame
	}
	var e jute.Encoder
	jute.EncodeReply(&e, &rep)
	return e.Bytes()
}

// multiPaths lists the path of each op of a multi, in order.
func multiPaths(m *jute.MultiRequest) []string {
	out := make([]string, len(m.Ops))
	for i, op := range m.Ops {
		switch b := op.Req.(type) {
		case *jute.SetDataRequest:
			out[i] = b.Path
		case *jute.DeleteRequest:
			out[i] = b.Path
		case *jute.CheckVersionRequest:
			out[i] = b.Path
		}
	}
	return out
}
