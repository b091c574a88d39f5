package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/fence"
	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// serverSeq tells apart the default names of the servers of one process.
var serverSeq atomic.Int64

// Config configures a Server. Zero values take the documented defaults.
type Config struct {
	// Upstream lists the ZooKeeper servers of the primary ensemble
	// ("host:port"): the one that serves clients.
	Upstream []string
	// PrimaryName names the primary ensemble (default ensemble.Source).
	PrimaryName ensemble.Name
	// Secondary lists the servers of the other ensemble. Set, the proxy
	// runs in two-ensemble mode: every client session also has a shadow
	// session on the secondary, and every write acknowledged by the
	// primary is mirrored to the secondary (SPEC.md 4.9).
	Secondary []string
	// MaxMirrorBacklog bounds the znode paths waiting to be mirrored to the
	// secondary, over all sessions (default 100,000). Beyond it a path is
	// not queued: it is counted in mirror_failures_total{reason="backlog_full"}
	// and left for the replicator to repair.
	MaxMirrorBacklog int
	// StateDir, if set, keeps each client session's shadow session id and
	// password, so a restarted proxy resumes the shadow session of a client
	// that reconnects within its timeout (and its ephemerals on the
	// secondary) instead of opening another.
	StateDir string
	// MaxFrame bounds a client frame (default jute.maxbuffer + extrasize,
	// 1 MiB + 1 KiB, what a ZooKeeper server accepts).
	MaxFrame int
	// MaxReplyFrame bounds a server frame (default 16 MiB: replies such as
	// a large getChildren may exceed the request limit).
	MaxReplyFrame int
	// MaxClientBacklog bounds the bytes of replies and events queued for a
	// client that has not read them yet (default 2 MiB; one frame may pass
	// it). At the bound the session stops reading from its upstream server
	// and from its client until the client reads: backpressure, never
	// unbounded buffering, and other sessions are unaffected.
	MaxClientBacklog int
	// MaxPending bounds a session's requests awaiting their reply (default
	// 1000, ZooKeeper's globalOutstandingLimit); at the bound the proxy
	// stops reading the client's requests until replies go out.
	MaxPending int
	// MaxCredentials bounds the distinct credentials (addAuth packets) a
	// session may hold (default 16); the proxy keeps them to replay after a
	// move. One beyond is answered AUTHFAILED, not forwarded, with a log line.
	MaxCredentials int
	// HandshakeTimeout bounds the time from accepting a connection to
	// receiving its ConnectRequest or four-letter word (default 10 s, as
	// ZooKeeper's sessionlessCnxnTimeout).
	HandshakeTimeout time.Duration
	// MaxConnections bounds the open client connections (default 4096).
	MaxConnections int
	// MaxConnectionsPerIP bounds the open client connections from one
	// address, as ZooKeeper's maxClientCnxns (default 1024: a sidecar sees
	// every local client as 127.0.0.1; ZooKeeper's own default is 60).
	MaxConnectionsPerIP int
	// FourLetterWords lists the admin commands answered, as ZooKeeper's
	// 4lw.commands.whitelist ("*" for all; default ruok, srvr, stat, mntr,
	// isro, envi). Others are refused as ZooKeeper refuses them: dump, cons,
	// wchp, wchc list other clients' sessions and watches.
	FourLetterWords []string
	// DialTimeout bounds one connection attempt to an upstream server,
	// handshake included (default 3 s).
	DialTimeout time.Duration
	// Dial opens upstream connections (default net.Dialer.DialContext).
	// Tests use it; with UpstreamTLS the TLS handshake wraps it.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// UpstreamTLS, if set, makes every connection to ZooKeeper (both
	// ensembles: relay, shadow sessions, mirror readers, catch-up,
	// four-letter words) a TLS client of the configuration it returns for
	// the server's host (verify it, present a client certificate for the
	// servers' ssl.clientAuth). Give a fresh configuration per call
	// (tlsconf.Files.ClientConfig) so rotated certificates are used.
	UpstreamTLS func(serverName string) *tls.Config
	// PlaintextServers lists servers ("host:port") dialled without TLS
	// even with UpstreamTLS: the ensemble that serves no TLS port in a
	// migration from plaintext to TLS (or back). The decision follows the
	// address, so it holds across a flip.
	PlaintextServers []string
	// SASLMirrorAuth are the credentials (digest "user:password") the
	// proxy presents, in place of a SASL client's identity, on that
	// client's shadow session and the mirror's reads of the primary (a
	// SASL exchange cannot be replayed; sasl.go). The ensembles must let
	// that identity read and write what SASL clients write (superDigest).
	SASLMirrorAuth []zkclient.Auth
	// Epoch is the flip epoch the proxy starts at (the control plane's
	// recorded one, when known); a flip request for an older one is refused.
	Epoch int64
	// FenceLease bounds how long a two-ensemble proxy that missed a flip
	// may go on serving reads from the old primary after it (default 5 s):
	// the proxy serves only while a read of its primary's fence znode,
	// repeated every quarter of it, shows the epoch it holds (SPEC.md 4.10).
	FenceLease time.Duration
	// PeerOffsets, if set, returns a peer proxy's version offsets at
	// epoch and primary (its Offsets.Paths, from GET /admin/v1/versions):
	// a one-shot flip (catching up with a flip this proxy missed) takes
	// them instead of reading its own, so its clients see the versions
	// the peers' clients see (view_peers.go). An error: it reads its own.
	PeerOffsets func(ctx context.Context, epoch int64, primary ensemble.Name) (map[string]PathOffset, error)
	// FencePath is the fence znode on both ensembles (default fence.Path;
	// tests isolate theirs).
	FencePath string
	// Retired is the ensemble the control plane records as retired by
	// phase 6 (advertised in gossip), for a proxy started without the
	// record in StateDir: it opens no shadow session there and mirrors
	// nothing to it, as if it had been asked to retire it.
	Retired ensemble.Name
	// Name names this proxy's hold marker under the fence znode (SPEC.md
	// 4.10): unique among the proxies of a migration, and the same after a
	// restart (default proxy-HOST-PID-N, unique but not stable).
	Name string
	// Metrics receives the proxy's measurements (default: unregistered).
	Metrics *Metrics
	// Logger receives one line per notable event (default slog.Default()).
	Logger *slog.Logger
}

// DefaultFourLetterWords are the admin commands answered by default: those
// that show the server's health and figures, not other clients' sessions.
var DefaultFourLetterWords = []string{"ruok", "srvr", "stat", "mntr", "isro", "envi"}

// ErrNoUpstream means Config.Upstream is empty.
var ErrNoUpstream = errors.New("proxy: no upstream servers (set --upstream host:port[,host:port...])")

func (c *Config) setDefaults() error {
	if len(c.Upstream) == 0 {
		return ErrNoUpstream
	}
	for _, a := range c.Upstream {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return fmt.Errorf("proxy: upstream %q is not host:port: %w", a, err)
		}
	}
	if c.PrimaryName == "" {
		c.PrimaryName = ensemble.Source
	}
	if !c.PrimaryName.Valid() {
		return fmt.Errorf("proxy: primary ensemble %q: want %s or %s", c.PrimaryName, ensemble.Source, ensemble.Target)
	}
	for _, a := range c.Secondary {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return fmt.Errorf("proxy: secondary %q is not host:port: %w", a, err)
		}
	}
	if c.MaxMirrorBacklog == 0 {
		c.MaxMirrorBacklog = 100000
	}
	if c.MaxFrame == 0 {
		c.MaxFrame = jute.DefaultMaxBuffer + jute.DefaultMaxBufferExtra
	}
	if c.MaxReplyFrame == 0 {
		c.MaxReplyFrame = 16 << 20
	}
	if c.MaxClientBacklog == 0 {
		c.MaxClientBacklog = 2 << 20
	}
	if c.MaxPending == 0 {
		c.MaxPending = 1000
	}
	if c.MaxCredentials == 0 {
		c.MaxCredentials = 16
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = 10 * time.Second
	}
	if c.MaxConnections == 0 {
		c.MaxConnections = 4096
	}
	if c.MaxConnectionsPerIP == 0 {
		c.MaxConnectionsPerIP = 1024
	}
	if c.FourLetterWords == nil {
		c.FourLetterWords = DefaultFourLetterWords
	}
	for _, w := range c.FourLetterWords {
		if w != "*" && !slices.Contains(jute.FourLetterWords, w) {
			return fmt.Errorf("proxy: %q is not a four-letter word ZooKeeper knows (%s, or * for all)", w, strings.Join(jute.FourLetterWords, ", "))
		}
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = 3 * time.Second
	}
	if c.FenceLease == 0 {
		c.FenceLease = 5 * time.Second
	}
	if c.Name == "" {
		host, _ := os.Hostname()
		c.Name = fmt.Sprintf("proxy-%s-%d-%d", host, os.Getpid(), serverSeq.Add(1))
	}
	if c.FencePath == "" {
		c.FencePath = fence.Path
	}
	if c.Dial == nil {
		c.Dial = (&net.Dialer{}).DialContext
	}
	if c.UpstreamTLS != nil {
		c.Dial = tlsDial(c.Dial, c.UpstreamTLS, c.PlaintextServers)
	}
	if c.Metrics == nil {
		c.Metrics = NewMetrics(nil)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Server is a ZooKeeper proxy: clients connect to it as to a ZooKeeper
// server; it decodes every frame and relays the session to one upstream
// server of the ensemble at a time, moving it to another server when that
// one fails.
type Server struct {
	cfg    Config
	log    *slog.Logger
	m      *Metrics
	ctx    context.Context
	cancel context.CancelFunc

	logs     *logLimiter // for events before a session exists
	allow4lw map[string]bool

	mu         sync.Mutex
	listeners  map[net.Listener]struct{}
	conns      map[net.Conn]string // the remote address's IP
	perIP      map[string]int
	sessions   map[int64]*session
	shadows    map[int64]*shadow   // two-ensemble mode, by client session id
	repairSeq  int64               // repair shadows started (mirror_repair.go)
	stopLeft   map[origin][]string // paths shadows held when the proxy stopped, by origin (mirror_persist.go)
	stranded   strandSet           // writes a missed flip stranded (mirror_stranded.go)
	journal    backlogJournal      // the backlog file between rewrites (mirror_persist.go)
	backlogGen atomic.Int64        // bumped at every change of the mirror backlog
	closed     bool

	readers       primaryReaders
	markerParents [2]atomic.Bool // replicator.SessionMarkers seen on each ensemble (session_marker.go)
	mirrorBacklog atomic.Int64   // paths queued on every shadow
	wg            sync.WaitGroup

	roles      atomic.Pointer[roles] // which ensemble serves, and the epoch (flip.go)
	hold       sync.RWMutex          // client requests hold a read lock; a flip holds the write lock (the pause)
	flipMu     sync.Mutex            // one flip at a time
	idmap      map[int64]identity    // client session id -> serving upstream session, once they differ (flip.go); under mu
	view       view                  // version translation across flips (view.go)
	seqParents seqParents            // parents of sequential creates, padded at a flip (flip_counters.go)

	started    time.Time     // the monotonic base of mono (fence.go)
	leaseUntil atomic.Int64  // mono reading until which requests may be served (fence.go)
	stale      atomic.Bool   // a later epoch was found in the fence: catching up (fence.go)
	leaseMu    sync.Mutex    // guards leaseCh
	leaseCh    chan struct{} // closed and replaced at every renewal of the lease
	fencePoke  chan struct{} // asks the fence watcher for a round now
	// watcherConn is the fence watcher's open session to the primary
	// watcherFor, lent to a hold's marker (barrier.go); under watcherMu.
	watcherMu   sync.Mutex
	watcherConn *zkclient.Conn
	watcherFor  ensemble.Name
	heldMu      sync.Mutex   // guards held
	held        *holding     // a flip barrier's hold in place (barrier.go)
	selfRound   atomic.Int64 // the announced barrier's round last held for (barrier_self.go)
	holdAsked   atomic.Int64 // the epoch of a hold being taken (barrier.go), 0 for none
	askedHold   atomic.Int64 // the epoch of the last hold the control plane asked (barrier.go)

	retired atomic.Pointer[ensemble.Name] // the secondary, once retired (retire.go); stored under mu
	standby standbyConn                   // a connection to the secondary for the next swap (flip_conns.go)
}

// New validates cfg and returns a Server that is not yet listening.
func New(cfg Config) (*Server, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	allow := map[string]bool{}
	for _, w := range cfg.FourLetterWords {
		allow[w] = true
	}
	s := &Server{
		cfg: cfg, log: cfg.Logger, m: cfg.Metrics, ctx: ctx, cancel: cancel,
		logs: newLogLimiter(cfg.Metrics), allow4lw: allow,
		listeners: map[net.Listener]struct{}{}, conns: map[net.Conn]string{}, perIP: map[string]int{},
		sessions: map[int64]*session{}, shadows: map[int64]*shadow{}, idmap: map[int64]identity{},
		started: time.Now(), leaseCh: make(chan struct{}), fencePoke: make(chan struct{}, 1),
	}
	s.stranded.wake = make(chan struct{}, 1)
	s.roles.Store(&roles{primary: cfg.PrimaryName, upstream: cfg.Upstream, secondary: cfg.Secondary, epoch: cfg.Epoch})
	s.view.on = len(cfg.Secondary) > 0 // one ensemble never flips: nothing to record or translate
	if err := s.loadRetired(); err != nil {
		cancel()
		return nil, err
	}
	if s.TwoEnsembles() {
		if !s.secondaryRetired() {
			s.restoreBacklog()
		}
		if cfg.PeerOffsets != nil {
			s.view.settle = make(chan struct{}, 1)
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				s.settleLoop()
			}()
		}
		s.loadVersions()
		if cfg.StateDir != "" {
			s.view.dirty = make(chan struct{}, 1)
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				s.persistVersions()
			}()
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.watchMirrorLag()
		}()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.watchFence()
		}()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.watchStranded()
		}()
	}
	return s, nil
}

// ErrServerClosed is returned by Serve after Close.
var ErrServerClosed = errors.New("proxy: server closed")

// Serve accepts client connections on ln until Close. It always returns a
// non-nil error; after Close, ErrServerClosed.
func (s *Server) Serve(ln net.Listener) error { return s.serve(ln, nil) }

// serve accepts on ln; with tlsCfg, every connection is a TLS server
// connection whose handshake serveConn completes.
func (s *Server) serve(ln net.Listener, tlsCfg *tls.Config) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.isClosed() {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscallEMFILE) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("accept failed; retrying", "err", err, "in", backoff)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("proxy: accept: %w", err)
		}
		backoff = 0
		if tlsCfg != nil {
			c = &tlsConn{Conn: tls.Server(c, tlsCfg), raw: c}
		}
		ok, refused := s.track(c)
		if !ok {
			c.Close()
			return ErrServerClosed
		}
		if refused != "" {
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.untrack(c)
			s.serveConn(c)
		}()
	}
}

// ListenAndServe listens on addr and serves until Close.
func (s *Server) ListenAndServe(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("proxy: listen %s: %w", addr, err)
	}
	return s.Serve(ln)
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// track admits a new connection. It returns false once the server is
// closed; refused names the limit that made it close c instead.
func (s *Server) track(c net.Conn) (ok bool, refused string) {
	ip := c.RemoteAddr().String()
	if host, _, err := net.SplitHostPort(ip); err == nil {
		ip = host
	}
	s.mu.Lock()
	switch {
	case s.closed:
		s.mu.Unlock()
		return false, ""
	case len(s.conns) >= s.cfg.MaxConnections:
		refused = "max_connections"
	case s.perIP[ip] >= s.cfg.MaxConnectionsPerIP:
		refused = "max_connections_per_ip"
	default:
		s.conns[c] = ip
		s.perIP[ip]++
		s.m.conns.Inc()
	}
	s.mu.Unlock()
	if refused != "" {
		c.Close()
		s.m.connsRefused.WithLabelValues(refused).Inc()
		s.logs.warn(s.log, refused, "refused a client connection: too many connections",
			"client", c.RemoteAddr().String(), "limit", refused,
			"max_connections", s.cfg.MaxConnections, "max_connections_per_ip", s.cfg.MaxConnectionsPerIP,
			"hint", "raise --max-connections / --max-connections-per-ip if these clients are legitimate")
	}
	return true, refused
}

// untrack closes c and forgets it; calling it again does nothing.
func (s *Server) untrack(c net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c.Close()
	ip, ok := s.conns[c]
	if !ok {
		return
	}
	delete(s.conns, c)
	if s.perIP[ip]--; s.perIP[ip] <= 0 {
		delete(s.perIP, ip)
	}
	s.m.conns.Dec()
}

// Close stops accepting, closes every client connection and its upstream
// connection, and waits for all goroutines to end. Upstream sessions are
// not closed: like a client that lost its connection, each lives until its
// timeout, so clients reconnecting to a restarted proxy keep their session.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.cancel()
	for ln := range s.listeners {
		ln.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	if s.TwoEnsembles() {
		s.saveBacklog(s.backlogAtStop) // every shadow has ended: what they held, and the stranded paths
		s.saveVersions()
	}
	return nil
}

// SessionCount is the number of sessions currently relayed.
func (s *Server) SessionCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// registerSession makes sess the owner of its id. A session the client
// re-opened on a new connection replaces the old relay, which is shut down so
// it cannot re-attach the session behind the new one's back.
func (s *Server) registerSession(sess *session) {
	s.mu.Lock()
	old := s.sessions[sess.id]
	s.sessions[sess.id] = sess
	if old == nil {
		s.m.sessions.Inc()
	}
	s.mu.Unlock()
	if old != nil {
		old.shutdown("client reopened the session on a new connection")
	}
}

// reconnecting is called when a client re-opens session id on a new
// connection. With the session's password, the old relay is shut down at
// once: the client has left that connection, and a relay left running could
// re-attach the session to another server behind the new connection's back
// when the server hands the session over. The new connection counts as
// hearing from the client. A wrong password proves nothing, as on a server.
func (s *Server) reconnecting(id int64, passwd []byte) {
	s.mu.Lock()
	sess := s.sessions[id]
	s.mu.Unlock()
	if sess != nil && bytes.Equal(sess.passwd, passwd) {
		sess.shutdown("client is re-opening the session on a new connection")
	}
}

func (s *Server) unregisterSession(sess *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sessions[sess.id] == sess {
		delete(s.sessions, sess.id)
		s.m.sessions.Dec()
	}
}

// serveConn owns one client connection from accept to close.
func (s *Server) serveConn(c net.Conn) {
	if tc, ok := c.(*tlsConn); ok && !s.handshakeClient(tc.Conn) {
		return
	}
	cc := newClientConn(s, c)
	_ = c.SetReadDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	first, err := cc.fr.PeekLength()
	if err != nil {
		cc.badFrame("handshake", err) // closed before sending anything, or too late
		return
	}
	if jute.IsFourLetterWord(first) {
		s.serveFourLetterWord(c, string(first[:]))
		return
	}
	cc.serve()
}

// serveFourLetterWord answers an admin command: "ruok" is answered by the
// proxy itself (it is running); the others are relayed to the first upstream
// server that answers, so monitoring sees the ensemble's figures.
func (s *Server) serveFourLetterWord(c net.Conn, word string) {
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if !s.allow4lw["*"] && !s.allow4lw[word] {
		s.m.fourLettersRefused.WithLabelValues(word).Inc()
		_, _ = io.WriteString(c, word+" is not executed because it is not in the whitelist.\n")
		return
	}
	s.m.fourLetters.WithLabelValues(word).Inc()
	if word == "ruok" {
		_, _ = io.WriteString(c, "imok")
		return
	}
	var lastErr error
	for _, addr := range pickUpstreams(s.roles.Load().upstream, "") {
		ctx, cancel := context.WithTimeout(s.ctx, s.cfg.DialTimeout)
		up, err := s.cfg.Dial(ctx, "tcp", addr)
		cancel()
		if err != nil {
			lastErr = err
			continue
		}
		_ = up.SetDeadline(time.Now().Add(10 * time.Second))
		_, err = io.WriteString(up, word)
		if err == nil {
			var b strings.Builder
			_, err = io.Copy(&b, io.LimitReader(up, 16<<20))
			if err == nil || b.Len() > 0 {
				up.Close()
				_, _ = io.WriteString(c, b.String())
				return
			}
		}
		up.Close()
		lastErr = err
	}
	s.logs.warn(s.log, "four_letter_word_failed", "four-letter word: no upstream server answered", "word", word, "err", lastErr)
	_, _ = fmt.Fprintf(c, "zk-migrate proxy: no upstream server answered %q: %v\n", word, lastErr)
}

// SessionUpstream reports the upstream server the session with the given id
// is attached to, for operators and tests.
func (s *Server) SessionUpstream(id int64) (string, bool) {
	s.mu.Lock()
	sess := s.sessions[id]
	s.mu.Unlock()
	if sess == nil {
		return "", false
	}
	up := sess.serving().up.Load()
	if up == nil {
		return "", false
	}
	return up.addr, true
}

// SessionIDs lists the sessions currently relayed.
func (s *Server) SessionIDs() []int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := make([]int64, 0, len(s.sessions))
	for id := range s.sessions {
		ids = append(ids, id)
	}
	return ids
}
