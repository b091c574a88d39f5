package mesosim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/zk-migrate/zk-migrate/mesosim/czk"
)

// ErrSessionExpired means a ZooKeeper session is gone: the server said so,
// or (as Mesos' GroupProcess does) the client stayed disconnected for the
// whole session timeout and gave the session up itself.
var ErrSessionExpired = errors.New("mesosim: ZooKeeper session expired")

// session is one ZooKeeper session kept the way Mesos' GroupProcess keeps
// it: the C client reconnects by itself; a disconnection that lasts the
// session timeout is treated as an expiry ("Timed out waiting to reconnect
// to ZooKeeper"), and so is the server's SESSION_EXPIRED.
type session struct {
	name    string // "contender", "detector", "log" or "agent"...
	url     ZKURL
	timeout time.Duration
	log     *slog.Logger
	conn    *czk.Conn

	sessionID      int64
	disconnectedAt time.Time // zero while connected
}

// openSession starts a session and waits until it is connected and
// authenticated. Like Mesos it keeps retrying with a fresh handle when a
// connection attempt outlives the session timeout, until ctx ends.
func openSession(ctx context.Context, name string, url ZKURL, timeout time.Duration, log *slog.Logger) (*session, error) {
	for {
		conn, err := czk.Dial(url.Hosts, timeout)
		if err != nil {
			return nil, err
		}
		s := &session{name: name, url: url, timeout: timeout, log: log, conn: conn}
		err = s.waitConnected(ctx)
		if err == nil {
			s.sessionID = conn.SessionID()
			if url.Auth != "" {
				if err = conn.AddAuth(ctx, "digest", url.Auth); err != nil {
					conn.Close()
					return nil, fmt.Errorf("mesosim: %s session: digest auth for %s: %w", name, url, err)
				}
			}
			log.Info("ZooKeeper session established", "session_id", fmt.Sprintf("0x%x", s.sessionID),
				"negotiated_timeout", conn.NegotiatedTimeout().String())
			return s, nil
		}
		conn.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		log.Warn("could not connect to ZooKeeper within the session timeout; retrying with a new session",
			"zk", url.String(), "timeout", timeout.String())
	}
}

func (s *session) waitConnected(ctx context.Context) error {
	t := time.NewTimer(s.timeout)
	defer t.Stop()
	for {
		if s.conn.State() == czk.StateConnected {
			s.conn.Events() // the CONNECTED event itself
			return nil
		}
		select {
		case <-s.conn.Notify():
			for _, ev := range s.conn.Events() {
				if ev.Type == czk.EventSession && ev.State == czk.StateConnected {
					return nil
				}
				if ev.Type == czk.EventSession && ev.State == czk.StateAuthFailed {
					return fmt.Errorf("mesosim: %s session: authentication failed", s.name)
				}
			}
		case <-t.C:
			return ErrSessionExpired
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// poll handles the queued events: session events update the disconnection
// timer, the others (watches) are returned. It returns ErrSessionExpired
// (wrapped with the reason) once the session is lost.
func (s *session) poll(now time.Time) ([]czk.Event, error) {
	var watches []czk.Event
	for _, ev := range s.conn.Events() {
		if ev.Type != czk.EventSession {
			watches = append(watches, ev)
			continue
		}
		switch ev.State {
		case czk.StateConnected:
			if !s.disconnectedAt.IsZero() {
				s.log.Info("reconnected to ZooKeeper", "session_id", fmt.Sprintf("0x%x", s.sessionID),
					"disconnected_for", now.Sub(s.disconnectedAt).Round(time.Millisecond).String())
			}
			s.disconnectedAt = time.Time{}
		case czk.StateConnecting, czk.StateAssociating:
			if s.disconnectedAt.IsZero() {
				s.disconnectedAt = now
				s.log.Warn("disconnected from ZooKeeper; reconnecting",
					"session_id", fmt.Sprintf("0x%x", s.sessionID))
			}
		case czk.StateExpired:
			return watches, fmt.Errorf("%w: the server expired session 0x%x (%s)", ErrSessionExpired, s.sessionID, s.name)
		case czk.StateAuthFailed:
			return watches, fmt.Errorf("%w: authentication failed for session 0x%x (%s)", ErrSessionExpired, s.sessionID, s.name)
		}
	}
	if !s.disconnectedAt.IsZero() && now.Sub(s.disconnectedAt) >= s.timeout {
		return watches, fmt.Errorf("%w: timed out waiting to reconnect to ZooKeeper for %v; forcing expiration of session 0x%x (%s)",
			ErrSessionExpired, s.timeout, s.sessionID, s.name)
	}
	return watches, nil
}

// ensurePath creates path and its parents (persistent), as Mesos' Group
// does before it joins.
func (s *session) ensurePath(ctx context.Context, path string) error {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	cur := ""
	for _, p := range parts {
		cur += "/" + p
		_, err := s.conn.Create(ctx, cur, nil, czk.Persistent, s.url.Auth != "")
		if err != nil && !czk.IsCode(err, czk.ErrNodeExists) {
			return fmt.Errorf("mesosim: create %s: %w", cur, err)
		}
	}
	return nil
}

func (s *session) close() { s.conn.Close() }

// retryable reports whether a call failed for a reason that a later retry
// on the same session may fix (connection loss while reconnecting).
func retryable(err error) bool {
	return czk.IsCode(err, czk.ErrConnectionLoss) || czk.IsCode(err, czk.ErrOperationTimeout) ||
		errors.Is(err, context.DeadlineExceeded)
}
