package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/replicator"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// Session markers (SPEC 4.9). In two-ensemble mode every upstream session
// the proxy opens, on either ensemble (the relay's session on the primary,
// the shadow on the secondary, a repair shadow, a session re-opened after
// an expiry; a flip swaps the roles of the first two), marks itself on its
// own ensemble with an ephemeral znode it owns,
// replicator.SessionMarker(its id), sent as the first request on the
// session right after the handshake: ZooKeeper applies a session's
// requests in order, so the marker is committed before any ephemeral the
// session creates, with no wait on the client's path (its reply is the
// proxy's own). It lives and dies with the session. The replicator reads
// it to tell a proxy session's ephemeral on the secondary (the mirror's
// business) from a bypassing client's (copied to the primary).
//
// SessionMarkers' parents are created with the first marker on each
// ensemble (NODEEXISTS is fine; after one success the proxy sends the
// marker alone). A marker that cannot be created (no permission to create
// under "/", a read-only server) is reported loudly and the session goes
// on: the client is served as before, only that session's ephemerals on
// the secondary may be taken by a replicator for a bypassing client's.
// The relay tries again whenever the session moves to another server.

// xidProxyMarker is the xid of the creates marking a relayed session.
const xidProxyMarker int32 = -30

// markerCreate is one of the creates marking a leg's session: the relay's
// reader hands its answer to markerAnswered (upstream.go).
type markerCreate struct {
	leg    *leg
	id     int64 // the session marked
	path   string
	marker bool // the marker itself (else a parent)
}

// markerRequests are the creates marking session id on ensemble name.
func (s *Server) markerRequests(id int64, name ensemble.Name) []*jute.CreateRequest {
	return replicator.SessionMarkerCreates(id, !s.markerParents[name.Index()].Load())
}

// markRelayLocked sends on up, first on the session (before any client
// request), the creates marking the serving leg's session, unless it is
// marked already; their answers are consumed by the reader. Callers hold
// wmu or own the session before its relay starts.
func (s *session) markRelayLocked(up *upstream) {
	l := s.serving()
	if !s.srv.TwoEnsembles() || l.marked.Load() || l.id == 0 {
		return
	}
	reqs := s.srv.markerRequests(l.id, l.name)
	s.omu.Lock()
	for _, r := range reqs {
		s.queue.push(pending{xid: xidProxyMarker, op: jute.OpCreate, kind: pendingInternal, start: time.Now(),
			arg: &markerCreate{leg: l, id: l.id, path: r.Path, marker: r.Flags == jute.FlagEphemeral}})
	}
	s.omu.Unlock()
	for _, r := range reqs {
		var e jute.Encoder
		(&jute.RequestHeader{Xid: xidProxyMarker, Type: int32(jute.OpCreate)}).Encode(&e)
		r.Encode(&e)
		_ = up.write(e.Bytes(), false) // a failed write: the reader sees it, the re-attach marks again
	}
	_ = up.w.Flush()
	l.lastSend.Store(time.Now().UnixNano())
}

// markerAnswered takes the answer to one of the creates marking a leg's
// session.
func (s *Server) markerAnswered(log *slog.Logger, mk *markerCreate, code jute.Code) {
	switch {
	case code == jute.CodeOK || code == jute.CodeNodeExists:
		if mk.marker {
			mk.leg.marked.Store(true)
		} else if mk.path == replicator.SessionMarkers {
			s.markerParents[mk.leg.name.Index()].Store(true)
		}
	case mk.marker || mk.path == replicator.SessionMarkers:
		// A parent refused makes the marker fail (NONODE): reported once.
		if mk.marker && code == jute.CodeNoNode && !s.markerParents[mk.leg.name.Index()].Load() {
			return
		}
		s.markFailed(log, mk.leg.name, mk.id, mk.path, code.Err())
	}
}

// markFailed reports a session the proxy could not mark.
func (s *Server) markFailed(log *slog.Logger, name ensemble.Name, id int64, path string, err error) {
	s.m.mirrorFailures.WithLabelValues("session_unmarked").Inc()
	hint := "create " + replicator.HeartbeatRoot + " (open) and " + replicator.SessionMarkers + " with ACL world:anyone:rc on that ensemble (zkCli: create " +
		replicator.SessionMarkers + " \"\" world:anyone:rc), or run the replicator (zk-migrate sync) with credentials that may create them"
	if jute.CodeOf(err) == jute.CodeNotReadOnly {
		hint = "the server is read-only: the relay marks the session again when it moves to a read-write server"
	}
	s.logs.warn(log, "session_unmarked", "could not mark an upstream session as the proxy's: a replicator beside the proxies may take its ephemerals on that ensemble for a bypassing client's and copy them to the other one",
		"ensemble", name.Flag(), "upstream_session", fmt.Sprintf("0x%x", id), "path", path, "err", err, "hint", hint)
}

// markConn sends on c, a new zkclient session on ensemble name of leg l
// (a shadow, a session re-opened at a flip), the creates marking it,
// pipelined before anything else sent on c; wait returns once they are
// answered (by ctx at the latest), records the leg marked, and reports a
// failure.
func (s *Server) markConn(c *zkclient.Conn, l *leg, log *slog.Logger) (wait func(ctx context.Context) bool) {
	id := c.SessionID()
	l.marked.Store(false) // a new session, or one whose marker is not known
	reqs := s.markerRequests(id, l.name)
	calls := make([]*zkclient.Call, len(reqs))
	for i, r := range reqs {
		calls[i] = c.Go(jute.OpCreate, r, &jute.CreateResponse{})
	}
	return func(ctx context.Context) bool {
		ok := true
		for i, call := range calls {
			select {
			case <-call.Done:
			case <-ctx.Done():
				return false // not known: the next connect of the leg marks again
			}
			code := jute.CodeOf(call.Err)
			mk := &markerCreate{leg: l, id: id, path: reqs[i].Path, marker: i == len(reqs)-1}
			if code != jute.CodeOK && code != jute.CodeNodeExists && !isZKCode(call.Err) {
				return false // the connection failed: marked again on the next
			}
			if mk.marker {
				ok = code == jute.CodeOK || code == jute.CodeNodeExists
			}
			s.markerAnswered(log, mk, code)
		}
		return ok
	}
}
