package proxy

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// The connections a swap works through (SPEC.md 4.10, 6): oc on the
// primary it leaves, to read (or raise) the fence and read versions there,
// and nc on the primary it moves to, for the same. Opening a session is a
// transaction on ZooKeeper, and so is closing one: with 100 proxies
// flipping at once, 200 of each in the pause cost hundreds of
// milliseconds. So the swap opens and closes none: oc is the mirror's
// reader of the primary (credential-less, mirror.go), nc the standby, a
// connection the proxy keeps to its secondary ensemble, opened with the
// first client session (or, at the latest, while the flip drains). At the
// swap they trade places: nc becomes the mirror's reader of the new
// primary and oc the standby on the new secondary, ready for the flip
// back.

// standbyConn is the server's connection to its secondary ensemble, for
// the next swap. Its owner is the server: closed when the server stops.
type standbyConn struct {
	mu      sync.Mutex
	name    ensemble.Name  // the ensemble it is (being) connected to
	ready   chan struct{}  // closed once the dial ended; nil: none
	c       *zkclient.Conn // nil while dialing, after a failed dial, or taken by a swap
	failed  time.Time      // when a dial last failed
	started bool           // keepStandby runs
	stopped bool           // the server stopped: nothing is kept any more
}

// standbyRetry spaces the dials of a standby whose secondary is
// unreachable (every client session's start asks for one).
const standbyRetry = time.Second

// warmStandby makes sure a connection to cur's secondary is open or being
// opened. Cheap when it is: called at every client session's start.
func (s *Server) warmStandby(cur *roles) {
	sb := &s.standby
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if sb.stopped || s.secondaryRetired() {
		return // a retired secondary gets no session (phase 6)
	}
	if !sb.started {
		sb.started = true
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.keepStandby()
		}()
	}
	want := cur.primary.Other()
	if sb.ready != nil && sb.name == want {
		select {
		case <-sb.ready:
			if sb.c != nil && alive(sb.c) {
				return
			}
			if sb.c == nil && time.Since(sb.failed) < standbyRetry {
				return // a swap dials it if it must
			}
		default:
			return // being dialed
		}
	}
	if sb.c != nil {
		s.closeLater(sb.c) // for the other ensemble, or dead
	}
	ready := make(chan struct{})
	sb.name, sb.ready, sb.c = want, ready, nil
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		ctx, cancel := context.WithTimeout(s.ctx, s.cfg.DialTimeout*time.Duration(len(cur.secondary)))
		c, err := zkclient.Dial(ctx, cur.secondary, zkclient.Options{DialTimeout: s.cfg.DialTimeout, Dial: s.cfg.Dial})
		cancel()
		sb.mu.Lock()
		defer sb.mu.Unlock()
		if r := s.retired.Load(); r != nil && *r == want && c != nil {
			s.closeLater(c) // retired while it was dialed (phase 6)
			c = nil
		}
		if sb.ready != ready || sb.stopped {
			// Replaced meanwhile (a flip, or the server stopped): not needed.
			if c != nil {
				c.Abandon()
			}
			return
		}
		if err != nil {
			sb.failed = time.Now()
			if s.ctx.Err() == nil {
				s.log.Debug("flip: no standby connection to the secondary yet; a swap dials it", "secondary", want.Flag(), "err", err)
			}
		}
		sb.c = c
		close(ready)
	}()
}

// keepStandby owns the standby connection across the server's life: it
// abandons the one kept when the server stops (its session expires by
// itself; nothing waits on the network then).
func (s *Server) keepStandby() {
	<-s.ctx.Done()
	sb := &s.standby
	sb.mu.Lock()
	sb.stopped = true
	c := sb.c
	sb.c = nil
	sb.mu.Unlock()
	if c != nil {
		c.Abandon()
	}
}

// takeStandby returns, for a swap from cur, the standby connection to
// cur's secondary, waiting for its dial; dialed now if there is none
// usable. The caller owns it (putStandby gives it back).
func (s *Server) takeStandby(ctx context.Context, cur *roles) (*zkclient.Conn, error) {
	want := cur.primary.Other()
	sb := &s.standby
	sb.mu.Lock()
	ready, name := sb.ready, sb.name
	sb.mu.Unlock()
	if ready != nil && name == want {
		select {
		case <-ready:
		case <-ctx.Done():
			return nil, fmt.Errorf("connect to %s: %w", want.Flag(), ctx.Err())
		}
		sb.mu.Lock()
		c := sb.c
		if sb.ready == ready {
			sb.ready, sb.c = nil, nil // taken
		} else {
			c = nil // replaced meanwhile
		}
		sb.mu.Unlock()
		if c != nil && alive(c) {
			return c, nil
		}
		if c != nil {
			c.Abandon()
		}
	}
	c, err := zkclient.Dial(ctx, cur.secondary, zkclient.Options{DialTimeout: s.cfg.DialTimeout, Dial: s.cfg.Dial})
	if err != nil {
		return nil, fmt.Errorf("reach the new primary %s: %w", want.Flag(), err)
	}
	return c, nil
}

// putStandby keeps c, a connection to ensemble name, as the standby.
func (s *Server) putStandby(name ensemble.Name, c *zkclient.Conn) {
	sb := &s.standby
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if sb.stopped || !alive(c) {
		c.Abandon()
		return
	}
	if r := s.retired.Load(); r != nil && *r == name {
		s.closeLater(c) // a retired ensemble keeps no session of this proxy
		return
	}
	if sb.c != nil {
		s.closeLater(sb.c)
	}
	ready := make(chan struct{})
	close(ready)
	sb.name, sb.ready, sb.c = name, ready, c
}

// dropStandby closes the standby connection if it is to ensemble name
// (retired by phase 6: no session of this proxy may stay there) and
// waits for the close.
func (s *Server) dropStandby(name ensemble.Name) {
	sb := &s.standby
	sb.mu.Lock()
	var c *zkclient.Conn
	if sb.name == name {
		c = sb.c
		sb.ready, sb.c = nil, nil
	}
	sb.mu.Unlock()
	if c != nil {
		if err := c.Close(); err != nil && !errors.Is(err, zkclient.ErrClosed) {
			s.log.Debug("retire: closing the standby connection", "upstream", c.Addr(), "err", err)
		}
	}
}

// takeSwapConns returns the connections for a swap from cur: oc, the
// mirror's reader of cur's primary (opened if there is none), and nc, the
// standby on its secondary (the caller owns nc).
func (s *Server) takeSwapConns(ctx context.Context, cur *roles) (oc, nc *zkclient.Conn, err error) {
	var errO error
	done := make(chan struct{})
	go func() {
		defer close(done)
		oc, errO = s.primaryReader(ctx, nil)
	}()
	nc, err = s.takeStandby(ctx, cur)
	<-done
	if errO != nil {
		if nc != nil {
			s.putStandby(cur.primary.Other(), nc)
		}
		return nil, nil, fmt.Errorf("reach the old primary %s: %w", cur.primary.Flag(), errO)
	}
	if err != nil {
		return nil, nil, err
	}
	return oc, nc, nil
}

func alive(c *zkclient.Conn) bool {
	select {
	case <-c.Done():
		return false
	default:
		return true
	}
}

// handOverReaders makes nc the mirror's credential-less reader of the new
// primary (the swap has switched the roles) and returns that of the old
// one (nil if none) and the others, for closeLater: a mirror after the
// swap must never read the old primary.
func (s *Server) handOverReaders(nc *zkclient.Conn) (plain *zkclient.Conn, others []*zkclient.Conn) {
	r := &s.readers
	key := credKey(nil)
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, c := range r.conns {
		if k == key {
			plain = c
		} else {
			others = append(others, c)
		}
	}
	r.conns = map[string]*zkclient.Conn{key: nc}
	return plain, others
}

// closeLater closes conns (their sessions end on ZooKeeper) on a goroutine
// of the server's, so that no flip waits for it.
func (s *Server) closeLater(conns ...*zkclient.Conn) {
	if len(conns) == 0 {
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for _, c := range conns {
			if s.ctx.Err() != nil {
				c.Abandon() // the server stops: nothing waits on the network
				continue
			}
			if err := c.Close(); err != nil && !errors.Is(err, zkclient.ErrClosed) && s.ctx.Err() == nil {
				s.log.Debug("flip: closing a connection the swap left", "upstream", c.Addr(), "err", err)
			}
		}
	}()
}
