package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/jute"
)

var syscallEMFILE = syscall.EMFILE

// clientConn is one accepted client connection before and during its session.
type clientConn struct {
	srv  *Server
	conn net.Conn
	fr   *jute.FrameReader
	log  *slog.Logger
	logs *logLimiter // this connection's (and session's) log budget
}

func newClientConn(s *Server, c net.Conn) *clientConn {
	return &clientConn{
		srv: s, conn: c,
		fr:   jute.NewFrameReader(bufio.NewReaderSize(countingReader{c, s.m}, bufSize), s.cfg.MaxFrame),
		log:  s.log.With("client", c.RemoteAddr().String()),
		logs: newLogLimiter(s.m),
	}
}

// countingReader counts bytes received from clients.
type countingReader struct {
	r io.Reader
	m *Metrics
}

func (c countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.m.bytesIn.Add(float64(n))
	return n, err
}

// serve runs the handshake and then the session until either side ends it.
func (cc *clientConn) serve() {
	frame, err := cc.fr.Next()
	if err != nil {
		cc.badFrame("connect request", err)
		return
	}
	_ = cc.conn.SetReadDeadline(time.Time{})      // the handshake deadline is met
	connectFrame := append([]byte(nil), frame...) // the reader reuses frame
	var req jute.ConnectRequest
	if err := jute.Unmarshal(connectFrame, &req); err != nil {
		cc.badFrame("connect request", err)
		return
	}
	// A session is opened and registered under the flip's hold, so a flip
	// either sees it (and moves it) or happens before it opens on the new
	// primary; never one opened on the old primary after the swap. The
	// hold is taken before the old relay of a re-opened session is shut
	// down: otherwise a flip between the two relays finds the session in
	// neither, does not move it, and the new relay resumes it on the new
	// primary with the old primary's identity (refused, or expired).
	cc.srv.hold.RLock()
	if req.SessionID != 0 {
		cc.srv.reconnecting(req.SessionID, req.Passwd)
	}
	sess := newSession(cc, &req)
	if !sess.open(connectFrame) {
		cc.srv.hold.RUnlock()
		return
	}
	if cc.srv.TwoEnsembles() {
		sess.markRelayLocked(sess.serving().up.Load()) // first on the session: before any client request
		sess.attachShadow()
	}
	// Its goroutines run before a flip can see it: a flip moves a running
	// relay (flipTo starts the new upstream's reader).
	sess.start()
	cc.srv.registerSession(sess)
	cc.srv.hold.RUnlock()
	defer cc.srv.unregisterSession(sess)
	if sess.shadow != nil {
		defer sess.releaseShadow()
	}
	sess.run()
}

// badFrame logs a client frame the proxy cannot accept and counts it; the
// caller then closes the connection, as a ZooKeeper server would.
func (cc *clientConn) badFrame(what string, err error) {
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) {
		return
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		cc.srv.m.connsRefused.WithLabelValues("handshake_timeout").Inc()
		cc.srv.logs.warn(cc.log, "handshake_timeout", "closing client connection: no ConnectRequest within the handshake timeout",
			"timeout", cc.srv.cfg.HandshakeTimeout)
		return
	}
	reason := "malformed"
	if errors.Is(err, jute.ErrFrameTooLarge) {
		reason = "too_large"
	}
	cc.srv.m.badFrames.WithLabelValues(reason).Inc()
	// One line per connection, and a flood of bad connections is limited
	// server-wide.
	cc.srv.logs.warn(cc.log, "bad_frame_"+reason, "closing client connection: bad "+what, "reason", reason, "err", err)
}

// session relays one ZooKeeper session between a client connection and an
// upstream server connection, which it replaces when the server fails.
//
// Goroutines: the connection's own goroutine runs readClient; supervise
// (pings, liveness, re-attach) and one upstream reader per upstream
// connection are started by run and have ended when run returns.
//
// Locks: wmu serializes writes to the upstream connection and re-attach;
// omu guards the pending queue, the watch set and writes to the client, so
// replies leave in the order requests were sent. Order: wmu before omu.
type session struct {
	cc      *clientConn
	srv     *Server
	log     *slog.Logger
	id      int64
	passwd  []byte
	timeout time.Duration
	connect jute.ConnectRequest // template for re-attaching

	// legs holds the session's connection to each ensemble it uses, by
	// ensemble.Name.Index(); primary names the one that serves the client.
	// In single-ensemble mode only the primary leg exists.
	legs    [2]*leg
	primary ensemble.Name
	cur     atomic.Pointer[leg] // the serving leg, legs[primary]; swapped under wmu at a flip
	shadow  *shadow             // two-ensemble mode: the secondary leg's shadow session
	zoff    atomic.Int64        // added to the serving leg's zxids before the client sees them (flip.go)

	ended atomic.Bool // the session itself ended (expired upstream)

	lastHeard atomic.Int64 // unix nanos of the last frame from the client
	closing   atomic.Bool  // closeSession sent: upstream EOF ends the session
	closeAck  atomic.Bool  // the server acknowledged closeSession (else closeLost retries it)
	detached  atomic.Bool  // the client connection has ended; the session waits for it
	sasl      atomic.Bool  // SASL used: cannot re-attach transparently

	wmu sync.Mutex // serializes writes to the serving leg's connection and re-attach

	omu     sync.Mutex
	out     *clientOut // replies to the client, in order; appended under omu
	queue   pendingQueue
	watches *watchSet
	auths   []*jute.AuthPacket

	pendingRoom chan struct{} // 1-buffered: replies taken off the queue

	done     chan struct{}
	doneOnce sync.Once
	wg       sync.WaitGroup
	life     sync.Mutex // guards stopped
	stopped  bool       // the supervisor has returned: wg may reach zero
}

func newSession(cc *clientConn, req *jute.ConnectRequest) *session {
	srv := cc.srv
	s := &session{
		cc: cc, srv: srv, log: cc.log, connect: *req, primary: srv.roles.Load().primary,
		out:         newClientOut(cc.conn, cc.srv.m, cc.srv.cfg.MaxClientBacklog),
		watches:     newWatchSet(),
		pendingRoom: make(chan struct{}, 1),
		done:        make(chan struct{}),
	}
	s.legs[s.primary.Index()] = newLeg(srv, s.primary, srv.roles.Load().upstream)
	s.cur.Store(s.legs[s.primary.Index()])
	s.lastHeard.Store(time.Now().UnixNano())
	return s
}

// serving is the leg that serves the client (the primary ensemble's).
func (s *session) serving() *leg { return s.cur.Load() }

// open attaches the new session to an upstream server and relays the
// server's ConnectResponse, byte for byte, to the client.
func (s *session) open(connectFrame []byte) bool {
	pl := s.serving()
	clientID, clientPw := s.connect.SessionID, s.connect.Passwd
	mapped, isMapped := identity{}, false
	if clientID != 0 {
		mapped, isMapped = s.srv.identityOf(clientID, clientPw)
		if s.srv.TwoEnsembles() {
			// A flip that did not move the session (session_resume.go).
			if m, ok := s.resumeOnPrimary(clientID, clientPw, s.connect.LastZxidSeen, mapped, isMapped); ok {
				mapped, isMapped = m, true
			}
		}
	}
	if isMapped {
		// Served by another upstream session since a flip: re-open that
		// one, with the client's last zxid in its numbering.
		s.zoff.Store(mapped.zoff)
		s.connect.SessionID, s.connect.Passwd = mapped.id, mapped.passwd
		s.connect.LastZxidSeen = max(0, s.connect.LastZxidSeen-mapped.zoff)
		connectFrame = jute.Marshal(&s.connect)
	}
	pl.lastZxid.Store(s.connect.LastZxidSeen)
	// While the ensemble elects a leader every server refuses sessions. Keep
	// trying rounds of servers for up to 2/3 of the session timeout the
	// client asked for (at most 10 s), so a client reconnecting during an
	// election waits instead of failing; stop if the client goes away.
	patience := min(time.Duration(s.connect.TimeOut)*time.Millisecond*2/3, 10*time.Second)
	deadline := time.Now().Add(patience)
	up, resp, raw, err := pl.dial(s.done, connectFrame, "")
	for backoff := 50 * time.Millisecond; err != nil && time.Now().Add(backoff).Before(deadline); backoff = min(2*backoff, time.Second) {
		if s.clientGone(backoff) {
			return false
		}
		up, resp, raw, err = pl.dial(s.done, connectFrame, "")
	}
	if err != nil {
		args := []any{"session", fmt.Sprintf("0x%x", s.connect.SessionID), "err", err}
		if errors.Is(err, errRefused) && s.srv.cfg.UpstreamTLS == nil {
			args = append(args, "hint", upstreamPlaintextHint)
		}
		s.srv.logs.warn(s.log, "no_upstream", "closing client connection: no upstream server accepted the session", args...)
		return false
	}
	upID, upPw := resp.SessionID, resp.Passwd
	if isMapped && !resp.Expired() {
		cp := *resp
		cp.SessionID, cp.Passwd = clientID, clientPw // the client keeps its own id and password
		raw = jute.Marshal(&cp)
	}
	// The writer goroutine starts with run; this one frame goes directly.
	_ = s.cc.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	n, _ := s.cc.conn.Write(jute.AppendFrame(nil, raw))
	s.srv.m.bytesOut.Add(float64(n))
	_ = s.cc.conn.SetWriteDeadline(time.Time{})
	if resp.Expired() {
		up.conn.Close()
		s.srv.sessionExpired(clientID)
		s.log.Info("session expired upstream; told the client", "session", fmt.Sprintf("0x%x", clientID))
		return false
	}
	s.id, s.passwd = upID, upPw
	if isMapped {
		s.id, s.passwd = clientID, clientPw
	}
	s.timeout = time.Duration(resp.TimeOut) * time.Millisecond
	pl.id, pl.passwd, pl.timeout = upID, upPw, s.timeout
	s.connect.SessionID, s.connect.Passwd, s.connect.TimeOut = upID, upPw, resp.TimeOut
	s.log = s.log.With("session", fmt.Sprintf("0x%x", s.id))
	pl.up.Store(up)
	pl.lastSend.Store(time.Now().UnixNano())
	s.log.Debug("session attached", "upstream", up.addr, "timeout", s.timeout)
	return true
}

// run relays the session until the session ends upstream (closed by the
// client, or by the proxy when the client has been silent for the session
// timeout), the client re-opens it on another connection, or the proxy
// closes. When the client connection ends first, the relay stays, detached,
// so a client that comes back within its timeout finds its session; the
// supervisor closes the session upstream once the timeout has passed.
func (s *session) run() {
	err := s.readClient()
	if err != nil {
		s.cc.badFrame("request", err)
	}
	s.detach()
	s.wg.Wait()
}

// start runs the relay's goroutines: the client writer, the upstream
// reader and the supervisor. Once the supervisor has returned, stopped
// is set (under life) and nothing may join the wait group any more.
func (s *session) start() {
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		s.out.run(s.done)
	}()
	s.startReader(s.serving().up.Load())
	go func() {
		defer s.wg.Done()
		defer func() {
			s.life.Lock()
			s.stopped = true
			s.life.Unlock()
		}()
		s.supervise()
	}()
}

// join takes a place in the relay's wait group for work done outside its
// goroutines (a flip starting the new upstream's reader); false once the
// relay is ending. Call leave when done.
func (s *session) join() bool {
	s.life.Lock()
	defer s.life.Unlock()
	if s.stopped {
		return false
	}
	s.wg.Add(1) // the supervisor still runs: the count is not zero
	return true
}

func (s *session) leave() { s.wg.Done() }

// detach ends the client side of the relay and keeps the upstream session
// for the client to come back to.
func (s *session) detach() {
	s.detached.Store(true)
	s.srv.untrack(s.cc.conn)
	select {
	case <-s.done:
	default:
		s.log.Debug("client connection ended; the session waits for the client until its timeout")
	}
}

// expire closes the session upstream because nothing has been heard from
// the client for the session timeout: what a ZooKeeper server does to a
// silent client, which the proxy must do itself since it answers the
// client's pings and keeps the upstream session alive with its own. The
// ensemble deletes the session's ephemerals at once; a client that wakes
// up reconnects and is told by the ensemble that its session expired.
//
// The client may instead be alive elsewhere: it re-opened its session
// through another proxy (or ZooKeeper directly) while this relay lost
// sight of it (a cut connection, a half-open one). ZooKeeper does not
// check who sends a closeSession, so closing it from here would kill the
// session under the live client. First the proxy asks whether its
// connection still owns the session: a write the leader refuses with
// SESSIONMOVED when another server's connection holds it (ownsSession; a
// connection to the same server is closed by the server when the session
// re-opens there, and the relay then lets go: see supervise). Only an
// owner closes.
func (s *session) expire(silent time.Duration) {
	if !s.out.stalled.Load() && !s.ownsSession() {
		s.log.Info("client silent here for its session timeout, but this connection no longer owns the session (the client re-opened it elsewhere, or the server is gone): leaving it to the ensemble",
			"silent", silent.Round(time.Millisecond))
		s.shutdown("session no longer owned by this relay")
		return
	}
	if time.Since(time.Unix(0, s.lastHeard.Load())) < s.timeout {
		return // the client spoke while the check was out: it is alive
	}
	s.srv.m.expired.Inc()
	s.log.Warn("client silent for its session timeout: closing its session upstream, as ZooKeeper expires it",
		"silent", silent.Round(time.Millisecond), "timeout", s.timeout, "connected", !s.detached.Load())
	s.closing.Store(true)
	s.cc.conn.Close()
	s.sendInternal(xidProxyClose, jute.OpCloseSession, &jute.Empty{}, trackNone)
}

// ownsSession asks the leader whether this relay's upstream connection
// still owns the session: a multi holding one version check of "/" that
// matches any version (ZooKeeper 3.8 closes the connection on a check sent
// alone).
// The leader checks a write's session owner and answers SESSIONMOVED when
// another server's connection holds it (a sync is not checked in 3.8: tried
// and seen to pass). A relay whose reader waits for a client that does not
// read skips it (expire): the server is still sending this connection the
// session's replies, so it owns it, and the answer could not be read anyway.
//
// The answer is awaited for up to the session timeout, not a fixed
// second: the check is a write, committed through the leader's log, and a
// loaded ensemble (slow fsyncs) took over a second to answer 5 of 50 at
// once. Giving up early gains nothing: the check's arrival restarted the
// ensemble's clock for the session, so abandoning it leaves the session to
// the ensemble's own expiry a whole timeout after the check, uncounted.
// An answer within the timeout is acted on; none means the server is
// gone, and by then the ensemble has expired the session itself.
func (s *session) ownsSession() bool {
	up := s.serving().up.Load()
	owned := make(chan jute.Code, 1)
	var e jute.Encoder
	(&jute.RequestHeader{Xid: xidProxyOwner, Type: int32(jute.OpMulti)}).Encode(&e)
	(&jute.MultiRequest{Ops: []jute.MultiOp{{
		Header: jute.MultiHeader{Type: int32(jute.OpCheck), Err: -1},
		Req:    &jute.CheckVersionRequest{Path: "/", Version: -1},
	}}}).Encode(&e)
	_ = s.forward(pending{xid: xidProxyOwner, op: jute.OpMulti, kind: pendingInternal, start: time.Now(), arg: owned}, e.Bytes(), true)
	wait := time.NewTimer(s.timeout)
	defer wait.Stop()
	select {
	case code := <-owned:
		if code != jute.CodeOK {
			s.log.Debug("owner check before closing a silent client's session", "code", code.String())
		}
		return code == jute.CodeOK
	case <-up.done:
		return false // the server is gone, or closed the connection as the session re-opened there
	case <-wait.C:
		return false // no answer: the server is gone, and so is this connection's hold
	case <-s.done:
		return false
	}
}

// xidProxyClose is the xid of the closeSession the proxy sends for a
// silent client; no client uses negative xids other than ZooKeeper's
// special ones.
const xidProxyClose int32 = -16

// xidProxyOwner is the xid of the version check that checks, before closing a silent
// client's session, that this relay's connection still owns it.
const xidProxyOwner int32 = -17

// shutdown ends the session's relay: it closes the client connection and the
// upstream connection. The upstream session itself lives on until the
// ensemble's own timeout, as when a client loses its connection to a server
// (this is what a proxy restart relies on).
// It never waits for wmu, so it can interrupt a re-attach in progress
// (which checks done after installing a new connection).
func (s *session) shutdown(why string) {
	s.doneOnce.Do(func() {
		s.log.Debug("session relay ending", "why", why)
		close(s.done)
		s.cc.conn.Close()
		if up := s.serving().up.Load(); up != nil {
			up.conn.Close()
		}
	})
}

// readClient reads and dispatches client frames until an error. It stops
// reading while the session has MaxPending requests in flight (as a
// ZooKeeper server stops reading a connection at its outstanding limit) or
// MaxClientBacklog bytes of replies the client has not read yet.
func (s *session) readClient() error {
	for {
		if err := s.waitClientRoom(); err != nil {
			return err
		}
		frame, err := s.cc.fr.Next()
		if err != nil {
			return err
		}
		s.lastHeard.Store(time.Now().UnixNano())
		if err := s.handleRequest(frame); err != nil {
			return err
		}
	}
}

// handleRequest validates one request and forwards it, answers it locally
// (ping, unknown opcode) or rejects the connection (malformed frame).
func (s *session) handleRequest(frame []byte) error {
	now := time.Now()
	req, err := jute.DecodeRequest(frame)
	op := jute.Op(req.Header.Type)
	s.srv.m.op(op).requests.Inc()
	if errors.Is(err, jute.ErrUnknownOpcode) {
		s.srv.m.badFrames.WithLabelValues("unknown_opcode").Inc()
		s.cc.logs.warn(s.log, "unknown_opcode", "unknown opcode: answered UNIMPLEMENTED", "op", int32(op), "xid", req.Header.Xid)
		s.answerLocally(req.Header.Xid, op, jute.CodeUnimplemented, now)
		return nil
	}
	if err != nil {
		return err
	}
	if op == jute.OpPing {
		s.answerLocally(jute.XidPing, op, jute.CodeOK, now) // answered even during a flip's pause
		return nil
	}
	s.srv.hold.RLock() // a flip in progress holds the request here (flip.go)
	defer s.srv.hold.RUnlock()
	p := pending{xid: req.Header.Xid, op: op, kind: pendingClient, start: now}
	if resendable(op) || s.shadow != nil && mirrored(op) {
		p.body = req.Body // kept to re-send it after a move (a write never is: its paths are mirrored if its reply is lost, mirror_queue.go)
	}
	switch b := req.Body.(type) {
	case *jute.GetDataRequest:
		if b.Watch {
			p.track, p.path = trackData, b.Path
		}
	case *jute.ExistsRequest:
		if b.Watch {
			p.track, p.path = trackExists, b.Path
		}
	case *jute.GetChildrenRequest:
		if b.Watch {
			p.track, p.path = trackChild, b.Path
		}
	case *jute.GetChildren2Request:
		if b.Watch {
			p.track, p.path = trackChild, b.Path
		}
	case *jute.AddWatchRequest:
		p.track, p.path, p.arg = trackAddWatch, b.Path, b.Mode
	case *jute.SetWatches:
		p.track, p.arg = trackSetWatches, req.Body
		if off := s.zoff.Load(); off != 0 {
			b.RelativeZxid = max(0, b.RelativeZxid-off) // back to the serving ensemble's numbering
			frame = reencode(req.Header, b)
		}
	case *jute.SetWatches2:
		p.track, p.arg = trackSetWatches, req.Body
		if off := s.zoff.Load(); off != 0 {
			b.RelativeZxid = max(0, b.RelativeZxid-off)
			frame = reencode(req.Header, b)
		}
	case *jute.RemoveWatchesRequest:
		p.track, p.path, p.arg = trackRemoveWatches, b.Path, b.Type
	case *jute.AuthPacket:
		cp := *b
		cp.Auth = append([]byte(nil), b.Auth...)
		admit, isNew := s.admitCredential(&cp)
		if !admit {
			s.srv.m.credsRefused.Inc()
			s.cc.logs.warn(s.log, "max_credentials", "refused addAuth: the session already holds the most distinct credentials allowed; answered AUTHFAILED",
				"scheme", cp.Scheme, "max_credentials", s.srv.cfg.MaxCredentials,
				"hint", "raise --max-credentials if this client needs more identities")
			s.answerLocally(req.Header.Xid, op, jute.CodeAuthFailed, now)
			return nil
		}
		if isNew {
			p.track, p.arg = trackAuth, &cp
		}
	case *jute.SASLRequest:
		p.track = trackSASL
		s.saslStarted()
	}
	p.spath = statPathOf(req.Body)
	if m, ok := req.Body.(*jute.MultiRequest); ok {
		p.mpaths = multiPaths(m)
	}
	if s.srv.view.toServing(req.Body) {
		frame = reencode(req.Header, req.Body) // versions in the serving ensemble's numbering (view.go)
	}
	if op == jute.OpCloseSession {
		p.track = trackClose
		s.closing.Store(true)
	}
	if s.shadow != nil {
		if op == jute.OpReconfig {
			s.cc.logs.warn(s.log, "reconfig_refused", "refused reconfig: the proxy writes to two ensembles and cannot reconfigure both as one; answered RECONFIGDISABLED",
				"hint", "reconfigure each ensemble directly, not through the proxy, outside a migration")
			s.answerLocally(req.Header.Xid, op, jute.CodeReconfigDisabled, now)
			return nil
		}
		p.mirror = mirrorPaths(req.Body)
		p.macl = requestedACL(req.Body)
		if mirrored(op) {
			s.shadow.intend(req.Body) // in --state-dir before the primary sees it (mirror_queue.go)
		}
	}
	// The fence (fence.go): every write checks the primary's fence version.
	if frame, p.wrapped, err = s.guardWrite(req.Header, op, req.Body, frame); err != nil {
		if s.shadow != nil && mirrored(op) {
			s.shadow.releaseIntent(p.body) // never sent
		}
		if errors.Is(err, errAnswered) {
			return nil
		}
		return err
	}
	return s.forward(p, frame, s.cc.fr.Buffered() == 0)
}

// forward queues p and writes its frame to the upstream server. It waits
// while the session is being re-attached. flush is false while more client
// frames are already buffered, so a pipelining client gets batched writes.
func (s *session) forward(p pending, frame []byte, flush bool) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	select {
	case <-s.done:
		return net.ErrClosed
	default:
	}
	pl := s.serving()
	up := pl.up.Load()
	s.omu.Lock()
	s.queue.push(p)
	s.omu.Unlock()
	if err := up.write(frame, flush); err != nil {
		// The upstream reader sees the failure too and the supervisor
		// re-attaches; the queued request is answered CONNECTIONLOSS then.
		return nil
	}
	pl.lastSend.Store(time.Now().UnixNano())
	return nil
}

// admitCredential decides whether an addAuth may go upstream: a credential
// the session holds already may (it is not stored twice); a new one only
// while the session holds, or awaits the answer for, fewer than
// MaxCredentials. The proxy keeps every credential to replay it after a
// move, so this bounds what a session can make it hold.
func (s *session) admitCredential(a *jute.AuthPacket) (admit, isNew bool) {
	s.omu.Lock()
	defer s.omu.Unlock()
	if s.holdsCredentialLocked(a) {
		return true, false
	}
	n := len(s.auths)
	for i := s.queue.head; i < len(s.queue.items); i++ {
		if it := &s.queue.items[i]; it.track == trackAuth && it.kind == pendingClient {
			n++
		}
	}
	return n < s.srv.cfg.MaxCredentials, true
}

func (s *session) holdsCredentialLocked(a *jute.AuthPacket) bool {
	for _, have := range s.auths {
		if have.Type == a.Type && have.Scheme == a.Scheme && bytes.Equal(have.Auth, a.Auth) {
			return true
		}
	}
	return false
}

// reencode makes a request frame of h and body.
func reencode(h jute.RequestHeader, body jute.Record) []byte {
	var e jute.Encoder
	h.Encode(&e)
	body.Encode(&e)
	return e.Bytes()
}

// waitClientRoom waits until the session may read another request.
func (s *session) waitClientRoom() error {
	counted := false
	for {
		s.omu.Lock()
		n := s.queue.len()
		s.omu.Unlock()
		if n < s.srv.cfg.MaxPending && !s.out.full() {
			return nil
		}
		if !counted {
			counted = true
			reason := "max_pending"
			if n < s.srv.cfg.MaxPending {
				reason = "client_backlog"
			}
			s.srv.m.backpressure.WithLabelValues("client", reason).Inc()
		}
		room := s.out.roomChan()
		s.out.flush()
		// Requests forwarded while more client frames were buffered were
		// not flushed (the next one would do it). No next one is read
		// until room is made, and room is made only by their replies:
		// send them now.
		s.flushUpstream()
		select {
		case <-s.pendingRoom:
		case <-room:
		case <-s.done:
			return net.ErrClosed
		}
	}
}

// flushUpstream sends what the current upstream connection holds buffered.
func (s *session) flushUpstream() {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if up := s.serving().up.Load(); up != nil {
		_ = up.w.Flush()
	}
}

// answerLocally queues a reply made by the proxy; it leaves as soon as every
// earlier request has been answered.
func (s *session) answerLocally(xid int32, op jute.Op, code jute.Code, start time.Time) {
	var e jute.Encoder
	off := e.StartFrame()
	h := jute.ReplyHeader{Xid: xid, Zxid: s.serving().lastZxid.Load(), Err: int32(code)}
	if h.Zxid > 0 {
		h.Zxid += s.zoff.Load()
	}
	h.Encode(&e)
	e.FinishFrame(off)
	s.omu.Lock()
	defer s.omu.Unlock()
	s.queue.push(pending{xid: xid, op: op, kind: pendingLocal, start: start, local: e.Bytes()})
	s.drainLocalLocked()
	s.out.flush()
}

// drainLocalLocked sends the prepared replies at the head of the queue.
func (s *session) drainLocalLocked() {
	for h := s.queue.peek(); h != nil && h.kind == pendingLocal; h = s.queue.peek() {
		p := s.queue.pop()
		s.out.appendRaw(p.local)
		s.srv.m.observeReply(p.op, jute.CodeOK, p.start)
	}
}

// clientGone waits up to d and reports whether the client closed its
// connection meanwhile (it sent nothing yet: it waits for our answer).
func (s *session) clientGone(d time.Duration) bool {
	_ = s.cc.conn.SetReadDeadline(time.Now().Add(d))
	defer func() { _ = s.cc.conn.SetReadDeadline(time.Time{}) }()
	_, err := s.cc.fr.PeekLength()
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}
