package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zk-migrate/zk-migrate/jute"
)

// upstream is one connection to one ZooKeeper server carrying a session.
type upstream struct {
	addr     string
	conn     net.Conn
	fr       *jute.FrameReader
	w        *bufio.Writer
	lastRecv atomic.Int64  // unix nanos of the last frame received
	done     chan struct{} // closed when the reader has ended
	err      error         // why the reader ended; read after done
	closeMu  sync.Once
}

// write sends one request frame (without length prefix). Callers hold the
// session's wmu.
func (u *upstream) write(frame []byte, flush bool) error {
	var hdr [4]byte
	hdr[0], hdr[1], hdr[2], hdr[3] = byte(len(frame)>>24), byte(len(frame)>>16), byte(len(frame)>>8), byte(len(frame))
	if _, err := u.w.Write(hdr[:]); err != nil {
		return err
	}
	if _, err := u.w.Write(frame); err != nil {
		return err
	}
	if flush {
		return u.w.Flush()
	}
	return nil
}

// errRefused means a server closed the connection without answering the
// ConnectRequest: it has seen fewer transactions than the client (it is
// behind), or it is not serving (no quorum, read-only refused).
var errReplayFailed = errors.New("request replayed by the proxy failed")

var errRefused = errors.New("server closed the connection without answering (behind the client's last zxid, or not serving)")

// startReader starts the goroutine that reads up's replies. It ends when
// the connection fails or is closed, closing up.done.
func (s *session) startReader(up *upstream) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		up.err = s.readUpstream(up)
		close(up.done)
	}()
}

// readUpstream relays replies and watch events from up to the client.
func (s *session) readUpstream(up *upstream) error {
	m := s.srv.m
	var ev jute.WatcherEvent
	for {
		if s.out.full() {
			// The client does not read its replies: stop reading the server
			// for this session until it does (the server's replies wait in
			// the socket, then in the server), never buffering without bound.
			m.backpressure.WithLabelValues("upstream", "client_backlog").Inc()
			s.out.stalled.Store(true)
			ok := s.out.waitRoom(s.done)
			s.out.stalled.Store(false)
			up.lastRecv.Store(time.Now().UnixNano())
			if !ok {
				return net.ErrClosed
			}
		}
		frame, err := up.fr.Next()
		if err != nil {
			return err
		}
		up.lastRecv.Store(time.Now().UnixNano())
		var h jute.ReplyHeader
		d := jute.NewDecoder(frame)
		if err := h.Decode(d); err != nil {
			return fmt.Errorf("reply from %s: %w", up.addr, err)
		}
		if h.Zxid > 0 && s.serving().up.Load() == up {
			s.serving().noteZxid(h.Zxid)
		}
		shiftZxid(frame, s.zoff.Load()) // the client's numbering (flip.go)
		flush := up.fr.Buffered() == 0
		s.omu.Lock()
		if h.Xid == jute.XidWatchEvent {
			if err := ev.Decode(d); err != nil {
				s.omu.Unlock()
				return fmt.Errorf("watch event from %s: %w", up.addr, err)
			}
			s.watches.fired(&ev)
			m.events.Inc()
			s.writeClientLocked(frame, flush)
			s.omu.Unlock()
			continue
		}
		p, ok := s.queue.take(h.Xid)
		if !ok {
			s.omu.Unlock()
			s.cc.logs.warn(s.log, "unmatched_reply", "dropping reply that matches no request", "xid", h.Xid, "upstream", up.addr)
			continue
		}
		if p.wrapped {
			nf, fenced, err := unwrapFenced(frame, p.op)
			if err != nil {
				s.omu.Unlock()
				return fmt.Errorf("reply from %s to a fenced write: %w", up.addr, err)
			}
			if fenced {
				s.omu.Unlock()
				s.fencedWrite("write") // the client sees ConnectionLoss
				continue
			}
			frame, d = nf, jute.NewDecoder(nf)
			_ = h.Decode(d)
		}
		code := jute.Code(h.Err)
		if p.op == jute.OpCloseSession && code == jute.CodeOK {
			s.closeAck.Store(true) // the client's close or the proxy's own (session_close.go)
		}
		s.watches.learn(&p, code)
		if p.track == trackAuth && code == jute.CodeOK && p.kind == pendingClient {
			if a := p.arg.(*jute.AuthPacket); !s.holdsCredentialLocked(a) {
				s.auths = append(s.auths, a)
				if s.shadow != nil {
					s.shadow.addAuth(a)
				}
			}
		}
		if s.shadow != nil && code == jute.CodeOK && p.kind == pendingClient && mirrored(p.op) {
			written := writtenPaths(&p, d)
			if p.macl != nil && len(written) == 1 {
				s.shadow.markACL(p.macl, written...)
			} else {
				s.shadow.mark(written...)
			}
			for _, w := range written {
				s.srv.view.note(w)
				s.srv.view.written(p.op, w)
				s.srv.seqParents.note(w)
			}
		}
		if s.shadow != nil && p.kind == pendingClient && mirrored(p.op) {
			s.shadow.releaseIntent(p.body) // queued above if it wrote anything
		}
		if p.kind == pendingClient {
			m.observeReply(p.op, code, p.start)
			if code == jute.CodeOK || p.op == jute.OpMulti {
				s.srv.view.note(p.spath)
				frame = s.translateReply(frame, &p)
			}
			s.writeClientLocked(frame, false)
		} else if owned, ok := p.arg.(chan jute.Code); ok {
			owned <- multiCode(code, d) // the owner check before closing a silent client's session
		} else if listed, ok := p.arg.(chan ephemeralsReply); ok {
			listed <- decodeEphemerals(code, d) // a flip's list of the session's ephemerals (flip_expired.go)
		} else if mk, ok := p.arg.(*markerCreate); ok {
			s.srv.markerAnswered(s.log, mk, code) // session_marker.go
		} else if reg, ok := p.arg.(chan int64); ok && code == jute.CodeOK {
			reg <- h.Zxid // the replayed watches are registered at this zxid
		} else if code != jute.CodeOK && p.op != jute.OpPing {
			s.omu.Unlock()
			return fmt.Errorf("%w: %s on %s: %s", errReplayFailed, p.op, up.addr, code)
		}
		s.drainLocalLocked()
		if flush {
			s.out.flush()
		}
		s.omu.Unlock()
		select {
		case s.pendingRoom <- struct{}{}:
		default:
		}
	}
}

// writeClientLocked queues one frame for the client (callers hold omu, so
// frames leave in the order they were queued). A client that is gone drops
// it; readClient notices and detaches the session.
func (s *session) writeClientLocked(frame []byte, flush bool) {
	s.out.appendFrame(frame)
	if flush {
		s.out.flush()
	}
}

// supervise keeps the upstream connection alive with pings, declares it dead
// when the server stays silent, re-attaches the session when it dies, and
// closes the session upstream when the client has been silent for the
// session timeout (see expire).
func (s *session) supervise() {
	tick := time.NewTicker(expiryTick(s.timeout))
	defer tick.Stop()
	var closingSince time.Time
	for {
		pl := s.serving()
		up := pl.up.Load()
		select {
		case <-s.done:
			return
		case <-s.srv.ctx.Done():
			s.shutdown("proxy closing")
			return
		case <-up.done:
			if pl.up.Load() != up || s.serving() != pl {
				continue // replaced by a flip
			}
			if s.closing.Load() {
				s.closeLost(err0(up.err, "the server closed the connection")) // unless acknowledged
				s.out.drain(time.Second)                                      // the closeSession's reply first, as ZooKeeper sends it
				s.shutdown("session closed")
				return
			}
			if errors.Is(up.err, errReplayFailed) {
				s.log.Warn("closing client connection: replaying its credentials or watches failed", "err", up.err)
				s.shutdown("replay failed")
				return
			}
			if s.detached.Load() {
				// Nobody to serve, and the likeliest cause is the client
				// itself: it re-opened the session on another connection
				// (through another proxy, or directly) and the server
				// closed this one. Re-attaching would take the session
				// back from under the live client; let the ensemble keep
				// it or expire it.
				s.log.Info("upstream connection ended while the client is away: leaving the session to the ensemble", "upstream", up.addr, "err", up.err)
				s.shutdown("upstream connection ended while detached")
				return
			}
			if !s.reattach(up) {
				return
			}
		case now := <-tick.C:
			if s.closing.Load() {
				// The server hangs up after answering closeSession; if it
				// does not, the session is over anyway.
				if closingSince.IsZero() {
					closingSince = now
				} else if now.Sub(closingSince) > s.timeout {
					s.closeLost(errors.New("no answer to closeSession within the session timeout")) // unless acknowledged
					s.shutdown("upstream did not end the closed session")
					return
				}
				continue
			}
			if silent := now.Sub(time.Unix(0, s.lastHeard.Load())); silent >= s.timeout {
				s.expire(silent)
				closingSince = now
				continue
			}
			nanos := now.UnixNano()
			// While the reader waits for the client to read, the server's
			// replies wait unread: its silence proves nothing.
			if time.Duration(nanos-up.lastRecv.Load()) > s.timeout*2/3 && !s.out.stalled.Load() {
				s.log.Warn("upstream server silent for 2/3 of the session timeout; moving the session", "upstream", up.addr)
				up.conn.Close()
				continue
			}
			if time.Duration(nanos-pl.lastSend.Load()) >= s.timeout/3 {
				s.sendInternal(jute.XidPing, jute.OpPing, &jute.Empty{}, trackNone)
			}
		}
	}
}

// expiryTick is how often the supervisor checks a session: a tenth of its
// timeout (at least 20 ms). A silent client's session is closed upstream at
// most one tick after its timeout.
func expiryTick(timeout time.Duration) time.Duration { return max(timeout/10, 20*time.Millisecond) }

// sendInternal sends a request of the proxy's own on the current upstream
// connection; its reply is consumed.
func (s *session) sendInternal(xid int32, op jute.Op, body jute.Record, track trackKind) {
	var e jute.Encoder
	h := jute.RequestHeader{Xid: xid, Type: int32(op)}
	h.Encode(&e)
	body.Encode(&e)
	_ = s.forward(pending{xid: xid, op: op, kind: pendingInternal, start: time.Now(), track: track}, e.Bytes(), true)
}

// reattach moves the session to another upstream server after dead failed.
// It holds wmu throughout, so client requests wait and then go to the new
// server.
//
// What the client sees depends on what was in flight on dead:
//   - nothing, or only reads: nothing. Credentials and watches are replayed
//     on the new connection (SetWatches relative to the last zxid seen, so
//     the server fires every change the client missed), then the in-flight
//     reads are sent again, in order.
//   - a write: its outcome is unknown, which a ZooKeeper client learns only
//     from a lost connection. The relay closes the client connection; the
//     client fails its pending requests with its own ConnectionLoss and
//     reconnects to the proxy with the same session, re-sending its auth and
//     watches. The session never expires.
//
// It returns false when the relay ends.
func (s *session) reattach(dead *upstream) bool {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	dead.conn.Close()
	m := s.srv.m
	pl := s.serving()
	if pl.up.Load() != dead {
		return true // a flip replaced it meanwhile
	}
	s.omu.Lock()
	if s.detached.Load() {
		// Nobody waits for the answers: a write in flight need not be
		// reported, and the session moves on for the client to come back.
		s.queue.dropClient()
	}
	unsafe := s.queue.unsafeInFlight()
	if unsafe && s.shadow != nil {
		s.shadow.markInFlight(&s.queue) // committed or not, their paths are mirrored (mirror_queue.go)
	}
	s.queue.dropInternal()
	s.drainLocalLocked()
	s.out.flush()
	s.omu.Unlock()
	select {
	case s.pendingRoom <- struct{}{}:
	default:
	}
	if unsafe {
		m.reconnects.WithLabelValues("client_reconnect").Inc()
		s.shutdown("a write was in flight on the lost server; the client reconnects to learn of it")
		return false
	}
	s.log.Info("upstream connection lost; re-attaching session", "upstream", dead.addr, "err", dead.err)
	if s.sasl.Load() {
		m.reconnects.WithLabelValues("client_reconnect").Inc()
		s.shutdown("session authenticated with SASL cannot be replayed; client must reconnect")
		return false
	}
	deadline := time.Unix(0, dead.lastRecv.Load()).Add(s.timeout)
	after := dead.addr
	var lastErr error
	for attempt := 0; time.Now().Before(deadline); attempt++ {
		connect := s.connect
		connect.LastZxidSeen = pl.lastZxid.Load()
		up, resp, _, err := pl.dial(s.done, jute.Marshal(&connect), after)
		if errors.Is(err, net.ErrClosed) {
			return false
		}
		if err == nil && resp.Expired() {
			up.conn.Close()
			s.ended.Store(true)
			m.reconnects.WithLabelValues("expired").Inc()
			s.shutdown("session expired upstream while re-attaching")
			return false
		}
		if err == nil {
			pl.up.Store(up)
			select {
			case <-s.done: // shut down meanwhile; shutdown may have missed up
				up.conn.Close()
				return false
			default:
			}
			s.startReader(up)
			s.omu.Lock()
			persistent, recursive := sortedKeys(s.watches.persistent), sortedKeys(s.watches.recursive)
			s.omu.Unlock()
			from := pl.lastZxid.Load()
			var registered chan int64
			if len(persistent)+len(recursive) > 0 {
				registered = make(chan int64, 1)
			}
			s.replayLocked(up, registered)
			if registered != nil {
				s.wg.Add(1)
				go func() {
					defer s.wg.Done()
					s.catchUp(persistent, recursive, from, registered)
				}()
			}
			m.reconnects.WithLabelValues("ok").Inc()
			s.log.Info("session re-attached", "upstream", up.addr, "attempts", attempt+1)
			return true
		}
		lastErr = err
		select {
		case <-s.done:
			return false
		case <-time.After(min(time.Duration(attempt+1)*50*time.Millisecond, 500*time.Millisecond)):
		}
	}
	m.reconnects.WithLabelValues("failed").Inc()
	s.log.Warn("could not re-attach session before its timeout", "err", lastErr)
	s.shutdown("no upstream server accepted the session in time")
	return false
}

// outgoing is a request the proxy (re)sends on its own.
type outgoing struct {
	xid  int32
	op   jute.Op
	body jute.Record
}

// replayLocked re-sends the session's credentials and watches on a fresh
// upstream connection. Callers hold wmu. registered, if not nil, receives
// the zxid at which the last SetWatches2 was applied.
func (s *session) replayLocked(up *upstream, registered chan int64) {
	s.markRelayLocked(up) // if the session's marker is not known to be there
	var reqs []outgoing
	s.omu.Lock()
	for _, a := range s.auths {
		reqs = append(reqs, outgoing{jute.XidAuth, jute.OpAuth, a})
	}
	for _, w := range s.watches.replay(s.serving().lastZxid.Load()) {
		op := jute.OpSetWatches
		if _, ok := w.(*jute.SetWatches2); ok {
			op = jute.OpSetWatches2
		}
		reqs = append(reqs, outgoing{jute.XidSetWatches, op, w})
	}
	last := -1
	for i, r := range reqs {
		if r.op == jute.OpSetWatches2 {
			last = i
		}
	}
	for i, r := range reqs {
		p := pending{xid: r.xid, op: r.op, kind: pendingInternal, start: time.Now()}
		if i == last && registered != nil {
			p.arg = registered
		}
		s.queue.push(p)
	}
	// Reads that were in flight on the lost server go again, in order,
	// after the replays; their queue entries stay where they are.
	for i := s.queue.head; i < len(s.queue.items); i++ {
		if p := &s.queue.items[i]; p.kind == pendingClient {
			reqs = append(reqs, outgoing{p.xid, p.op, p.body})
		}
	}
	s.omu.Unlock()
	for _, r := range reqs {
		var e jute.Encoder
		h := jute.RequestHeader{Xid: r.xid, Type: int32(r.op)}
		h.Encode(&e)
		r.body.Encode(&e)
		_ = up.write(e.Bytes(), false)
	}
	_ = up.w.Flush()
	s.serving().lastSend.Store(time.Now().UnixNano())
}

// multiCode is the outcome of a multi: the reply's error, else the first
// failing operation's.
func multiCode(code jute.Code, d *jute.Decoder) jute.Code {
	if code != jute.CodeOK {
		return code
	}
	var r jute.MultiResponse
	if err := r.Decode(d); err != nil {
		return jute.CodeMarshallingError
	}
	for _, res := range r.Results {
		if res.Header.Type == int32(jute.OpError) && res.Header.Err != 0 {
			return jute.Code(res.Header.Err)
		}
	}
	return jute.CodeOK
}
