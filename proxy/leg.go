package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"time"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/jute"
)

// leg is a session's connection to one ensemble: the ensemble's name and
// servers, the upstream session's own id, password and last zxid, and the
// connection currently carrying it. A relayed session has one leg per
// ensemble: the primary leg serves the client (relay mode: up, with the
// session's reader, supervisor, re-attach and replay); in two-ensemble mode
// the secondary leg is the client's shadow session (shadow.go), which
// carries the mirrored writes. At a flip (issue 11) the legs swap roles: a
// leg's identity (id, password, zxid) is what moves, its connection is
// re-attached in the other mode with the same id and password.
type leg struct {
	srv   *Server
	name  ensemble.Name
	addrs []string

	id      int64
	passwd  []byte
	timeout time.Duration

	marked   atomic.Bool              // the session's marker is on its ensemble (session_marker.go)
	lastZxid atomic.Int64             // highest zxid any reply carried
	lastSend atomic.Int64             // unix nanos of the last upstream write
	up       atomic.Pointer[upstream] // relay connection; stored under the session's wmu
}

func newLeg(srv *Server, name ensemble.Name, addrs []string) *leg {
	return &leg{srv: srv, name: name, addrs: addrs}
}

// noteZxid raises lastZxid to z.
func (l *leg) noteZxid(z int64) {
	for old := l.lastZxid.Load(); z > old && !l.lastZxid.CompareAndSwap(old, z); old = l.lastZxid.Load() {
	}
}

// pickUpstreams returns addrs in the order to try them: starting at a
// random server (spreading sessions like a ZooKeeper client's shuffled host
// list), or after the given one when re-attaching.
func pickUpstreams(addrs []string, after string) []string {
	n := len(addrs)
	start := rand.IntN(n)
	for i, a := range addrs {
		if a == after {
			start = i + 1
		}
	}
	out := make([]string, n)
	for i := range out {
		out[i] = addrs[(start+i)%n]
	}
	return out
}

// dial tries each upstream server, starting after the one named, until one
// answers the ConnectRequest; it returns the decoded and raw response.
func (l *leg) dial(done <-chan struct{}, connectFrame []byte, after string) (*upstream, *jute.ConnectResponse, []byte, error) {
	return l.dialThen(done, time.Time{}, connectFrame, after, nil)
}

// dialThen is dial sending the request frame then right behind the
// ConnectRequest, in the same write: ZooKeeper reads nothing more from a
// connection until its session is set up (or refused), so then is served
// in the session, and its reply follows the ConnectResponse (the caller
// reads it before any reader starts). One round trip instead of two.
// A non-zero by bounds the whole attempt (a flip's swap deadline).
func (l *leg) dialThen(done <-chan struct{}, by time.Time, connectFrame []byte, after string, then []byte) (*upstream, *jute.ConnectResponse, []byte, error) {
	var errs []error
	for _, addr := range pickUpstreams(l.addrs, after) {
		select {
		case <-done:
			return nil, nil, nil, net.ErrClosed
		default:
		}
		if !by.IsZero() && !time.Now().Before(by) {
			errs = append(errs, errSwapDeadline)
			break
		}
		up, resp, raw, err := l.dialOne(addr, by, connectFrame, then)
		if err == nil {
			return up, resp, raw, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", addr, err))
	}
	return nil, nil, nil, errors.Join(errs...)
}

func (l *leg) dialOne(addr string, by time.Time, connectFrame, then []byte) (*upstream, *jute.ConnectResponse, []byte, error) {
	cfg := &l.srv.cfg
	until := time.Now().Add(cfg.DialTimeout)
	if !by.IsZero() && by.Before(until) {
		until = by
	}
	ctx, cancel := context.WithDeadline(l.srv.ctx, until)
	defer cancel()
	conn, err := cfg.Dial(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, nil, err
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	up := l.upstreamOn(conn, addr)
	_ = conn.SetDeadline(until)
	err = up.write(connectFrame, then == nil)
	if err == nil && then != nil {
		err = up.write(then, true)
	}
	if err != nil {
		conn.Close()
		return nil, nil, nil, err
	}
	raw, err := up.fr.Next()
	if err != nil {
		conn.Close()
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, nil, nil, errRefused
		}
		return nil, nil, nil, err
	}
	raw = append([]byte(nil), raw...) // the reader reuses its buffer
	var resp jute.ConnectResponse
	if err := jute.Unmarshal(raw, &resp); err != nil {
		conn.Close()
		return nil, nil, nil, fmt.Errorf("bad ConnectResponse: %w", err)
	}
	_ = conn.SetDeadline(time.Time{})
	up.lastRecv.Store(time.Now().UnixNano())
	return up, &resp, raw, nil
}

// upstreamOn wraps conn, connected to addr, as the leg's relay connection.
func (l *leg) upstreamOn(conn net.Conn, addr string) *upstream {
	return &upstream{
		addr: addr, conn: conn,
		fr:   jute.NewFrameReader(bufio.NewReaderSize(conn, bufSize), l.srv.cfg.MaxReplyFrame),
		w:    bufio.NewWriterSize(conn, bufSize),
		done: make(chan struct{}),
	}
}
