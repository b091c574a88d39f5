package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"
)

// TLS on both sides of the proxy (SPEC.md 4.11).
//
// Clients: ServeTLS serves a listener whose connections speak TLS (as a
// ZooKeeper server's secureClientPort); the handshake runs in the
// connection's own goroutine, bounded by HandshakeTimeout, so a client
// that stalls it holds up nobody. Upstream: Config.UpstreamTLS wraps every
// connection the proxy opens to ZooKeeper (relay, shadow sessions, the
// mirror's readers, catch-up, four-letter words) in TLS, handshake
// completed before the first ZooKeeper byte.

// ServeTLS is Serve for clients that speak TLS: every accepted connection
// completes a TLS handshake with cfg (its GetConfigForClient, if set, is
// consulted per connection: tlsconf reloads certificates that way) before
// its first frame. A connection whose first bytes are not a TLS record (a
// plaintext ZooKeeper client) is closed and logged. TLS below 1.2 is
// refused whatever cfg says. Serve and ServeTLS may run at once on
// different listeners.
func (s *Server) ServeTLS(ln net.Listener, cfg *tls.Config) error {
	if cfg == nil {
		return errors.New("proxy: ServeTLS needs a TLS configuration")
	}
	cfg = cfg.Clone()
	cfg.MinVersion = max(cfg.MinVersion, tls.VersionTLS12)
	if get := cfg.GetConfigForClient; get != nil {
		// The configuration returned per client replaces this one: hold it
		// to TLS 1.2 as well.
		cfg.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			c, err := get(hello)
			if c != nil && c.MinVersion < tls.VersionTLS12 {
				c = c.Clone()
				c.MinVersion = tls.VersionTLS12
			}
			return c, err
		}
	}
	return s.serve(ln, cfg)
}

// tlsConn is a TLS connection whose Close closes the TCP connection at
// once, without a close_notify alert: tls.Conn.Close writes that alert
// under a 5 s deadline, and the proxy closes connections while holding
// locks (untrack and Close hold Server.mu, a relay's shutdown its own),
// where a peer that does not read could hold them that long. ZooKeeper
// peers need no close_notify (a closed connection is a lost connection).
type tlsConn struct {
	*tls.Conn
	raw net.Conn
}

// Close closes the underlying TCP connection.
func (c *tlsConn) Close() error { return c.raw.Close() }

// handshakeClient completes the TLS handshake of a client connection; on
// failure it logs why (rate-limited) and returns false.
func (s *Server) handshakeClient(c *tls.Conn) bool {
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.HandshakeTimeout)
	defer cancel()
	err := c.HandshakeContext(ctx)
	if err == nil {
		return true
	}
	var rec tls.RecordHeaderError
	switch {
	case errors.As(err, &rec):
		s.m.connsRefused.WithLabelValues("plaintext_on_tls").Inc()
		s.logs.warn(s.log, "plaintext_on_tls", "refused a plaintext connection on the TLS-only client port",
			"client", c.RemoteAddr().String(), "err", err,
			"hint", "point the client at the plaintext --listen port, or make it speak TLS (Java: -Dzookeeper.client.secure=true with the Netty socket; go-zookeeper: a TLS dialer)")
	case errors.Is(err, context.DeadlineExceeded):
		s.m.connsRefused.WithLabelValues("handshake_timeout").Inc()
		s.logs.warn(s.log, "tls_handshake_timeout", "closing client connection: no TLS handshake within the handshake timeout",
			"client", c.RemoteAddr().String(), "timeout", s.cfg.HandshakeTimeout)
	default:
		s.m.connsRefused.WithLabelValues("tls_handshake").Inc()
		s.logs.warn(s.log, "tls_handshake", "refused a client connection: TLS handshake failed",
			"client", c.RemoteAddr().String(), "err", err,
			"hint", "with --client-tls-ca the client must present a certificate signed by that CA; the client must trust the CA of --client-tls-cert")
	}
	return false
}

// upstreamPlaintextHint is added to the log line of servers that closed
// a plaintext connection unanswered: a TLS-only server does that too.
const upstreamPlaintextHint = "if the servers serve TLS only (secureClientPort, Netty), start the proxy with --zk-tls-ca (and --zk-tls-cert/--zk-tls-key for ssl.clientAuth=need)"

// tlsDial wraps dial: the connection is a TLS client of cfg(host) whose
// handshake is complete when it is returned, except to the servers listed
// in plaintext.
func tlsDial(dial func(ctx context.Context, network, addr string) (net.Conn, error), cfg func(serverName string) *tls.Config, plaintext []string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	plain := map[string]bool{}
	for _, a := range plaintext {
		plain[a] = true
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if plain[addr] {
			return dial(ctx, network, addr)
		}
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		raw, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		c := tls.Client(raw, cfg(host))
		if dl, ok := ctx.Deadline(); ok {
			_ = raw.SetDeadline(dl)
		}
		if err := c.HandshakeContext(ctx); err != nil {
			raw.Close()
			return nil, fmt.Errorf("TLS handshake with %s (is it the server's secureClientPort, and does its certificate chain to --zk-tls-ca?): %w", addr, err)
		}
		_ = raw.SetDeadline(time.Time{})
		return &tlsConn{Conn: c, raw: raw}, nil
	}
}
