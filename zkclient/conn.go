// Package zkclient is a small asynchronous ZooKeeper client on the jute
// codec, for zk-migrate's own traffic (the replicator): requests are
// pipelined on one connection and complete through *Call values, and it
// speaks the 3.6+ opcodes go-zookeeper lacks (addWatch, multiRead,
// getEphemerals).
//
// A Conn is one session on one TCP connection. It does not reconnect: when
// the connection fails, Done is closed and Err says why. A caller that must
// keep the session (its ephemerals) dials again with Options.SessionID and
// Options.Passwd before the session times out; watches must then be set
// again.
//
// Usage:
//
//	c, err := zkclient.Dial(ctx, []string{"zk1:2181"}, zkclient.Options{})
//	defer c.Close()
//	data, stat, err := c.Get(ctx, "/mesos")
//	call := c.Go(jute.OpGetData, &jute.GetDataRequest{Path: "/a"}, &jute.GetDataResponse{})
//	<-call.Done // call.Err, call.Resp
package zkclient

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zk-migrate/zk-migrate/jute"
)

// Options configure a session.
type Options struct {
	// SessionTimeout requested from the server (default 10 s).
	SessionTimeout time.Duration
	// DialTimeout bounds one connection attempt with its handshake (3 s).
	DialTimeout time.Duration
	// SessionID and Passwd resume an existing session instead of opening one.
	SessionID int64
	Passwd    []byte
	// Auth credentials are added right after the handshake, in order.
	Auth []Auth
	// MaxFrame bounds a reply frame (default 16 MiB).
	MaxFrame int
	// TLS, if set, returns the TLS configuration of one connection to the
	// host serverName (a server's secureClientPort); nil: plaintext. Each
	// dial asks again, so a reloaded certificate is used by the next one.
	TLS func(serverName string) *tls.Config
	// Dial opens the TCP connection (default net.Dialer.DialContext); the
	// proxy passes its own (Config.Dial) so that every connection it makes
	// goes the same way.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// EventBuffer is the capacity of the watch event channel (default 4096).
	// When it is full the connection stops reading until there is room:
	// events are never dropped.
	EventBuffer int
	// BufferSize is the size of the connection's read and write buffers
	// (default 64 KiB, for the replicator's pipelined bulk traffic). A
	// session that carries little, like the proxy's shadow sessions, one
	// per client, asks for less: a larger frame still goes through.
	BufferSize int
}

// Auth is one credential, as for addAuth ("digest", "user:password").
type Auth struct {
	Scheme string
	Secret []byte
}

// ErrClosed means the connection was closed or lost; Conn.Err has detail.
var ErrClosed = errors.New("zkclient: connection closed")

// ErrExpired means the server refused to resume the session.
var ErrExpired = errors.New("zkclient: session expired")

// Call is one request in flight. Done is closed when it completes; Err is
// then nil, a jute.Error with the server's code, or a connection error.
type Call struct {
	Op   jute.Op
	Req  jute.Record
	Resp jute.Record
	Err  error
	Zxid int64
	Done chan struct{}
}

// Conn is a ZooKeeper session on one connection.
type Conn struct {
	addr      string
	conn      net.Conn
	sessionID int64
	passwd    []byte
	timeout   time.Duration
	lastZxid  atomic.Int64

	wmu      sync.Mutex   // serializes writes and xid allocation
	waiting  atomic.Int32 // callers queued for wmu: the last one flushes
	w        *bufio.Writer
	xid      int32
	lastSend atomic.Int64

	mu    sync.Mutex
	calls map[int32]*Call
	err   error

	pings     atomic.Int32 // pings sent and not answered yet
	detaching atomic.Bool  // Detach stops the reader (detach.go)
	readEnd   chan error   // the reader's end, while detaching
	fr        *jute.FrameReader

	events chan jute.WatcherEvent
	done   chan struct{}
	once   sync.Once
	wg     sync.WaitGroup
}

// Dial connects to the first of addrs (tried in random order) that accepts
// the session, and adds opts.Auth.
func Dial(ctx context.Context, addrs []string, opts Options) (*Conn, error) {
	if opts.SessionTimeout == 0 {
		opts.SessionTimeout = 10 * time.Second
	}
	if opts.DialTimeout == 0 {
		opts.DialTimeout = 3 * time.Second
	}
	if opts.MaxFrame == 0 {
		opts.MaxFrame = 16 << 20
	}
	if opts.BufferSize <= 0 {
		opts.BufferSize = 64 << 10
	}
	if opts.EventBuffer == 0 {
		opts.EventBuffer = 4096
	}
	if opts.Passwd == nil {
		opts.Passwd = make([]byte, 16)
	}
	if len(addrs) == 0 {
		return nil, errors.New("zkclient: no server addresses")
	}
	var errs []error
	for _, i := range rand.Perm(len(addrs)) {
		c, err := dialOne(ctx, addrs[i], opts)
		if err == nil {
			for _, a := range opts.Auth {
				if err := c.Do(ctx, jute.OpAuth, &jute.AuthPacket{Scheme: a.Scheme, Auth: a.Secret}, nil); err != nil {
					c.Abandon()
					return nil, fmt.Errorf("zkclient: auth %s on %s: %w", a.Scheme, addrs[i], err)
				}
			}
			return c, nil
		}
		if errors.Is(err, ErrExpired) || ctx.Err() != nil {
			return nil, err
		}
		errs = append(errs, fmt.Errorf("%s: %w", addrs[i], err))
	}
	return nil, fmt.Errorf("zkclient: no server accepted the session: %w", errors.Join(errs...))
}

func dialOne(ctx context.Context, addr string, opts Options) (*Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, opts.DialTimeout)
	defer cancel()
	dial := opts.Dial
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	nc, err := dial(dctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if opts.TLS != nil {
		host, _, _ := net.SplitHostPort(addr)
		tc := tls.Client(nc, opts.TLS(host))
		if err := tc.HandshakeContext(dctx); err != nil {
			nc.Close()
			return nil, fmt.Errorf("TLS handshake (is this the server's secureClientPort, and does its certificate chain to the CA?): %w", err)
		}
		nc = tc
	}
	_ = nc.SetDeadline(time.Now().Add(opts.DialTimeout))
	req := jute.ConnectRequest{TimeOut: int32(opts.SessionTimeout / time.Millisecond), SessionID: opts.SessionID,
		Passwd: opts.Passwd, HasReadOnly: true}
	w := bufio.NewWriterSize(nc, opts.BufferSize)
	_, _ = w.Write(jute.AppendFrame(nil, jute.Marshal(&req)))
	if err := w.Flush(); err != nil {
		nc.Close()
		return nil, err
	}
	fr := jute.NewFrameReader(bufio.NewReaderSize(nc, opts.BufferSize), opts.MaxFrame)
	frame, err := fr.Next()
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("handshake: %w", err)
	}
	var resp jute.ConnectResponse
	if err := jute.Unmarshal(append([]byte(nil), frame...), &resp); err != nil {
		nc.Close()
		return nil, fmt.Errorf("handshake: %w", err)
	}
	if resp.Expired() {
		nc.Close()
		return nil, ErrExpired
	}
	_ = nc.SetDeadline(time.Time{})
	c := &Conn{
		addr: addr, conn: nc, sessionID: resp.SessionID, passwd: resp.Passwd,
		timeout: time.Duration(resp.TimeOut) * time.Millisecond,
		w:       w, calls: map[int32]*Call{},
		events: make(chan jute.WatcherEvent, opts.EventBuffer),
		done:   make(chan struct{}),
	}
	c.lastSend.Store(time.Now().UnixNano())
	c.fr, c.readEnd = fr, make(chan error, 1)
	c.wg.Add(2)
	go func() {
		defer c.wg.Done()
		err := c.readLoop(fr)
		if c.detaching.Load() {
			c.readEnd <- err // Detach decides
			return
		}
		c.fail(err)
	}()
	go func() { defer c.wg.Done(); c.pingLoop() }()
	return c, nil
}

// SessionID is the session's id.
func (c *Conn) SessionID() int64 { return c.sessionID }

// LastZxid is the highest zxid a reply header carried on this connection:
// every transaction up to it was applied on that server before the reply,
// so later reads on the connection reflect it (after a Sync, it is at least
// the leader's zxid when the sync began).
func (c *Conn) LastZxid() int64 { return c.lastZxid.Load() }

// Passwd is the session's password (to resume it with Options.Passwd).
func (c *Conn) Passwd() []byte { return c.passwd }

// Addr is the server the session is connected to.
func (c *Conn) Addr() string { return c.addr }

// Timeout is the negotiated session timeout.
func (c *Conn) Timeout() time.Duration { return c.timeout }

// Events delivers watch notifications in the order the server sent them. It
// is closed when the connection ends.
func (c *Conn) Events() <-chan jute.WatcherEvent { return c.events }

// Done is closed when the connection has ended.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err says why the connection ended (nil while it is up).
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Go sends a request and returns at once. resp receives the reply body; it
// may be nil for replies without one.
func (c *Conn) Go(op jute.Op, req, resp jute.Record) *Call {
	call := &Call{Op: op, Req: req, Resp: resp, Done: make(chan struct{})}
	c.waiting.Add(1)
	c.wmu.Lock()
	c.waiting.Add(-1)
	defer c.wmu.Unlock()
	var xid int32
	switch op {
	case jute.OpAuth:
		xid = jute.XidAuth
	case jute.OpPing:
		xid = jute.XidPing
	default:
		c.xid++
		if c.xid <= 0 {
			c.xid = 1
		}
		xid = c.xid
	}
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		call.Err = c.err
		close(call.Done)
		return call
	}
	if op != jute.OpPing {
		c.calls[xid] = call
	} else {
		c.pings.Add(1)
	}
	c.mu.Unlock()
	var e jute.Encoder
	off := e.StartFrame()
	h := jute.RequestHeader{Xid: xid, Type: int32(op)}
	h.Encode(&e)
	if req != nil {
		req.Encode(&e)
	}
	e.FinishFrame(off)
	// Pipelining callers share system calls: while another caller waits
	// for the lock, it will flush after writing its own request.
	_, err := c.w.Write(e.Bytes())
	if err == nil && c.waiting.Load() == 0 {
		err = c.w.Flush()
	}
	if err != nil {
		go c.fail(err)
	}
	c.lastSend.Store(time.Now().UnixNano())
	if op == jute.OpPing {
		close(call.Done)
	}
	return call
}

// Do sends a request and waits for its reply. When ctx ends first, Do
// returns ctx's error at once while the reply may still arrive and be
// decoded into resp later: a caller must not read resp after an error.
func (c *Conn) Do(ctx context.Context, op jute.Op, req, resp jute.Record) error {
	call := c.Go(op, req, resp)
	select {
	case <-call.Done:
		return call.Err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (c *Conn) readLoop(fr *jute.FrameReader) error {
	defer close(c.events)
	for {
		frame, err := fr.Next()
		if err != nil {
			return err
		}
		d := jute.NewDecoder(frame)
		var h jute.ReplyHeader
		if err := h.Decode(d); err != nil {
			return fmt.Errorf("zkclient: reply header: %w", err)
		}
		if h.Zxid > c.lastZxid.Load() {
			c.lastZxid.Store(h.Zxid)
		}
		switch h.Xid {
		case jute.XidWatchEvent:
			var ev jute.WatcherEvent
			if err := ev.Decode(d); err != nil {
				return fmt.Errorf("zkclient: watch event: %w", err)
			}
			select {
			case c.events <- ev:
			case <-c.done:
				return ErrClosed
			}
			continue
		case jute.XidPing:
			c.pings.Add(-1)
			continue
		}
		c.mu.Lock()
		call := c.calls[h.Xid]
		delete(c.calls, h.Xid)
		c.mu.Unlock()
		if call == nil {
			return fmt.Errorf("zkclient: reply xid %d matches no request", h.Xid)
		}
		call.Zxid = h.Zxid
		if h.Err != 0 {
			call.Err = jute.Code(h.Err).Err()
		} else if call.Resp != nil {
			// Byte buffers in the reply alias the frame, which the reader
			// reuses: decode from a private copy.
			body := append([]byte(nil), frame[d.Offset():]...)
			if err := call.Resp.Decode(jute.NewDecoder(body)); err != nil {
				call.Err = fmt.Errorf("zkclient: %s reply: %w", call.Op, err)
			}
		}
		close(call.Done)
	}
}

// pingLoop keeps the session alive while the connection is idle.
func (c *Conn) pingLoop() {
	t := time.NewTicker(c.timeout / 6)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
			if time.Since(time.Unix(0, c.lastSend.Load())) >= c.timeout/3 {
				c.Go(jute.OpPing, nil, nil)
			}
		}
	}
}

// fail ends the connection with err, failing every call in flight.
func (c *Conn) fail(err error) {
	c.once.Do(func() {
		if err == nil {
			err = ErrClosed
		}
		c.mu.Lock()
		c.err = fmt.Errorf("%w: %v", ErrClosed, err)
		calls := c.calls
		c.calls = map[int32]*Call{}
		c.mu.Unlock()
		close(c.done)
		c.conn.Close()
		for _, call := range calls {
			call.Err = c.err
			close(call.Done)
		}
	})
}

// Close ends the session (its ephemerals are deleted) and the connection.
func (c *Conn) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout/2)
	defer cancel()
	err := c.Do(ctx, jute.OpCloseSession, nil, nil)
	c.fail(ErrClosed)
	c.wg.Wait()
	if err != nil && !errors.Is(err, ErrClosed) {
		return err
	}
	return nil
}

// Abandon closes the connection without ending the session: it lives on
// until its timeout, so a new Dial with its id and password can resume it.
func (c *Conn) Abandon() {
	c.fail(ErrClosed)
	c.wg.Wait()
}
