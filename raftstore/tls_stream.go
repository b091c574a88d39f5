package raftstore

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// TLS secures the Raft transport with mutual TLS: every control node
// presents its certificate and verifies the other's against the CA, on
// both ends of every connection, and then checks that the certificate is
// a control node's Raft certificate (CheckPeerCert with PeerName): a
// certificate that merely chains to the CA, an API client's say, is
// refused before Raft reads a byte from it.
type TLS struct {
	// Server is the listener's configuration; it must require and verify
	// client certificates (tlsconf.Files.ServerConfig(RequireClientCert)).
	Server *tls.Config
	// Client returns the configuration of one dial to serverName (the
	// host of the peer's Raft address, which its certificate must name);
	// it must present this node's certificate.
	Client func(serverName string) *tls.Config
	// PeerName is the identity every control node's Raft certificate
	// carries (a DNS SAN or the CN); DefaultPeerName when empty.
	PeerName string
}

// handshakeTimeout bounds a TLS handshake on the Raft port.
const handshakeTimeout = 5 * time.Second

// tlsStream is a raft.StreamLayer over mutual TLS. Connections are
// handshaken in their own goroutines before Raft sees them, so a peer
// without a valid certificate, or speaking plaintext, is refused with a
// log line, and a peer that stalls its handshake holds up nobody else.
// The accept loop and the handshakes belong to the stream; Close stops
// them and waits for them.
type tlsStream struct {
	ln  net.Listener
	adv net.Addr
	cfg *TLS
	log *slog.Logger

	conns chan net.Conn // handshaken connections for Accept
	done  chan struct{} // closed by Close
	errc  chan error    // the listener's final error
	wg    sync.WaitGroup
	once  sync.Once
}

var _ raft.StreamLayer = (*tlsStream)(nil)

func newTLSStream(bind string, adv net.Addr, cfg *TLS, log *slog.Logger) (*tlsStream, error) {
	if cfg.Server == nil || cfg.Client == nil {
		return nil, errors.New("raftstore: TLS needs a server and a client configuration")
	}
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, err
	}
	if a, ok := adv.(*net.TCPAddr); adv == nil || ok && a.Port == 0 {
		adv = ln.Addr()
	}
	s := &tlsStream{ln: ln, adv: adv, cfg: cfg, log: log, conns: make(chan net.Conn), done: make(chan struct{}), errc: make(chan error, 1)}
	s.wg.Add(1)
	go s.acceptLoop()
	return s, nil
}

func (s *tlsStream) acceptLoop() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			s.errc <- err
			return
		}
		s.wg.Add(1)
		go s.handshake(c)
	}
}

// handshake completes one connection's TLS handshake and hands it to
// Accept, or closes it and says why.
func (s *tlsStream) handshake(c net.Conn) {
	defer s.wg.Done()
	tc := tls.Server(c, s.cfg.Server)
	_ = c.SetDeadline(time.Now().Add(handshakeTimeout))
	err := tc.Handshake()
	_ = c.SetDeadline(time.Time{})
	if err == nil {
		if err := checkConn(tc, s.cfg.PeerName); err != nil {
			tc.Close()
			s.log.Warn("raft: refused a connection: the peer's certificate chains to --raft-tls-ca but is not a control node's Raft certificate",
				"remote", c.RemoteAddr().String(), "err", err, "hint", peerHint)
			return
		}
		select {
		case s.conns <- tc:
		case <-s.done:
			tc.Close()
		}
		return
	}
	c.Close()
	var rec tls.RecordHeaderError
	switch {
	case errors.As(err, &rec):
		s.log.Warn("raft: refused a plaintext connection on the TLS-only Raft port", "remote", c.RemoteAddr().String(),
			"hint", "every control node needs the same --raft-tls-cert/--raft-tls-key/--raft-tls-ca flags")
	case errors.Is(err, io.EOF):
		// A connection closed before any byte: the join probe, a port scan.
	default:
		s.log.Warn("raft: refused a connection: TLS handshake failed", "remote", c.RemoteAddr().String(), "err", err,
			"hint", "the peer needs a certificate signed by --raft-tls-ca that names its address")
	}
}

// Accept returns the next connection whose TLS handshake succeeded.
func (s *tlsStream) Accept() (net.Conn, error) {
	select {
	case c := <-s.conns:
		return c, nil
	case err := <-s.errc:
		s.errc <- err // every later Accept fails the same way
		return nil, err
	case <-s.done:
		return nil, net.ErrClosed
	}
}

// Close stops the listener and the handshakes in progress, and waits for
// them.
func (s *tlsStream) Close() error {
	var err error
	s.once.Do(func() {
		close(s.done)
		err = s.ln.Close()
		s.wg.Wait()
	})
	return err
}

// Addr is the advertised address.
func (s *tlsStream) Addr() net.Addr { return s.adv }

// Dial connects to a peer and completes the handshake: the peer must
// present a certificate that chains to the CA, names its host and is a
// control node's Raft certificate.
func (s *tlsStream) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	host, _, err := net.SplitHostPort(string(address))
	if err != nil {
		return nil, fmt.Errorf("raftstore: peer address %q: %w", address, err)
	}
	d := &net.Dialer{Timeout: timeout}
	c, err := tls.DialWithDialer(d, "tcp", string(address), s.cfg.Client(host))
	if err != nil {
		return nil, fmt.Errorf("raftstore: TLS dial %s: %w", address, err)
	}
	if err := checkConn(c, s.cfg.PeerName); err != nil {
		c.Close()
		s.log.Warn("raft: refused to talk to a peer: its certificate is not a control node's Raft certificate", "peer", string(address), "err", err, "hint", peerHint)
		return nil, fmt.Errorf("raftstore: TLS dial %s: %w", address, err)
	}
	return c, nil
}
