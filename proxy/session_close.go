package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// Closing an upstream session is done only when the server acknowledges
// closeSession. A close lost with its server (the connection dropped
// before the answer: the server was killed, or lost its leader with the
// close uncommitted) leaves the session, and every ephemeral it owns,
// alive on the ensemble until it expires there, a timeout counted from
// the ensemble's next leader: a stopped Mesos master's json.info_ that
// outlives it on the primary (its peers follow a dead leader), or on the
// secondary (a replicator without the session markers took it for a
// bypassing client's). So the relay (a client's close, or the proxy's own
// for a silent client) and the shadow retry a close they did not see
// acknowledged, on any server of the ensemble, until it is, the session
// is gone, or it must have expired anyway (closeUntil).

// closeAcked sends closeSession on c and returns nil only if the server
// acknowledged it (zkclient's Close also returns nil when the connection
// was lost before the answer). c is closed either way.
func closeAcked(c *zkclient.Conn, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), max(timeout, 100*time.Millisecond))
	defer cancel()
	err := c.Do(ctx, jute.OpCloseSession, nil, nil)
	c.Abandon()
	if err != nil {
		return fmt.Errorf("closeSession not acknowledged: %w", err)
	}
	return nil
}

// lostClose is a session whose close was not acknowledged.
type lostClose struct {
	log     *slog.Logger
	what    string // "shadow session", "session"
	addrs   []string
	name    string // its ensemble, as --source/--target name it
	id      int64
	passwd  []byte
	auths   []zkclient.Auth
	timeout time.Duration
	closeBy time.Time // the close is not given up before this
}

// closeUntil re-attaches lc's session with its id and password on any
// server of its ensemble as soon as one answers and sends closeSession,
// until that is acknowledged, the server says the session is gone, or
// the session must have expired there anyway: its timeout has passed since
// the last attempt that found the ensemble unreachable (an ensemble that
// lost its quorum restarts its sessions' clocks when it regains it), and
// at most shadowCloseCap timeouts after closeBy. Run in a goroutine
// counted in Server.wg; it ends with the server's context.
func (s *Server) closeUntil(lc lostClose) {
	hardStop := lc.closeBy.Add(shadowCloseCap * lc.timeout)
	deadline := lc.closeBy
	backoff := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		now := time.Now()
		if now.After(deadline) || now.After(hardStop) {
			lc.log.Warn("gave up closing the "+lc.what+": it has expired by now, or does within its timeout",
				"upstream_session", fmt.Sprintf("0x%x", lc.id), "ensemble", lc.name, "attempts", attempt-1)
			return
		}
		ctx, cancel := context.WithTimeout(s.ctx, lc.timeout)
		c, err := zkclient.Dial(ctx, lc.addrs, zkclient.Options{SessionTimeout: lc.timeout, DialTimeout: s.cfg.DialTimeout, Dial: s.cfg.Dial,
			SessionID: lc.id, Passwd: lc.passwd, Auth: lc.auths, BufferSize: 4 << 10, EventBuffer: 16})
		cancel()
		if errors.Is(err, zkclient.ErrExpired) {
			lc.log.Info(lc.what+" already gone from its ensemble", "upstream_session", fmt.Sprintf("0x%x", lc.id), "ensemble", lc.name, "attempts", attempt)
			return
		}
		if err == nil {
			if err = closeAcked(c, lc.timeout/2); err == nil {
				lc.log.Info(lc.what+" closed after a close lost with its server: its ephemerals are gone", "upstream_session", fmt.Sprintf("0x%x", lc.id),
					"ensemble", lc.name, "attempts", attempt)
				return
			}
		}
		if s.ctx.Err() != nil {
			return // the proxy stops: the session expires after its timeout
		}
		// No server answered (or the close was not acknowledged): the
		// session may live on for a timeout from now.
		deadline = maxTime(deadline, time.Now().Add(lc.timeout))
		lc.log.Debug("closing the "+lc.what+": its ensemble is not answering yet", "upstream_session", fmt.Sprintf("0x%x", lc.id), "err", err)
		select {
		case <-s.ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// closeLost is called when the relay's upstream connection ended, or
// stayed open past the timeout, after closeSession was sent (by the
// client, or by the proxy for a silent client) and before it was
// acknowledged: the session is closed again from a goroutine of its own
// (closeUntil), so its ephemerals do not outlive the client on the
// primary. Counted in upstream_reconnects_total{result="close_retried"}
// and logged.
func (s *session) closeLost(why error) {
	l := s.serving()
	if l.id == 0 || s.srv.ctx.Err() != nil || s.closeAck.Load() {
		return
	}
	srv := s.srv
	s.omu.Lock()
	auths := make([]zkclient.Auth, 0, len(s.auths))
	for _, a := range s.auths {
		auths = append(auths, zkclient.Auth{Scheme: a.Scheme, Secret: append([]byte(nil), a.Auth...)})
	}
	s.omu.Unlock()
	srv.m.reconnects.WithLabelValues("close_retried").Inc()
	srv.logs.warn(s.log, "session_close_retry", "the session's close was lost with its upstream server; closing it again as soon as a server of the ensemble answers",
		"upstream_session", fmt.Sprintf("0x%x", l.id), "ensemble", l.name.Flag(), "err", why,
		"hint", "until it is closed or expired the client's ephemerals stay on that ensemble")
	lc := lostClose{log: s.log, what: "session", addrs: l.addrs, name: l.name.Flag(), id: l.id, passwd: append([]byte(nil), l.passwd...),
		auths: auths, timeout: s.timeout, closeBy: time.Now().Add(s.timeout)}
	srv.wg.Add(1) // the relay's connection goroutine, counted in wg, still runs: no race with Wait
	go func() {
		defer srv.wg.Done()
		srv.closeUntil(lc)
	}()
}
