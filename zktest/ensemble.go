// Package zktest starts real ZooKeeper servers for tests, benchmarks and the
// local sandbox: plain JVMs running QuorumPeerMain from Debian's jars, on
// loopback with free ports and temporary data directories.
//
// Usage:
//
//	ens, err := zktest.Start(ctx, zktest.Config{Servers: 3})
//	if err != nil { ... }
//	defer ens.Close()
//	conn, _, _ := zk.Connect(ens.Addrs(), 10*time.Second)
//	ens.Kill(1)    // SIGKILL server 1
//	ens.Restart(1) // same data dir, same ports
//
// Like net/http/httptest it does not import testing, so the sandbox command
// can use it too. Close always stops every JVM it started, and servers are
// started in their own process group with a parent-death signal, so a
// crashed test does not leave JVMs behind.
package zktest

import (
	"context"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/zk-migrate/zk-migrate/zkclient"
)

// Defaults for locating ZooKeeper as Debian's zookeeper package installs it.
const (
	DefaultJava      = "java"
	DefaultClassPath = "/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar"
	// NettyClassPath is added for a TLS ensemble: the Netty connection
	// factory's codec and handler jars, which zookeeper.jar's manifest
	// does not pull in.
	NettyClassPath = "/usr/share/java/netty-handler.jar:/usr/share/java/netty-codec.jar"
)

// ErrNotInstalled means ZooKeeper's jars or java were not found.
var ErrNotInstalled = errors.New("zktest: ZooKeeper is not installed (run: apt-get install zookeeper, or `make deps`)")

// Config describes an ensemble to start.
type Config struct {
	// Servers is the number of servers; 1 starts a standalone server.
	Servers int
	// Name labels the ensemble in logs and data dirs ("a", "b").
	Name string
	// Dir holds data dirs and logs; a fresh temp dir when empty, removed by
	// Close.
	Dir string
	// TickTime in ms (default 500: sessions from 1 s to MaxSessionTimeout).
	TickTime int
	// MaxSessionTimeout in ms (default 60000).
	MaxSessionTimeout int
	// Java and ClassPath locate the JVM and jars (Debian defaults).
	Java, ClassPath string
	// HeapMB caps each JVM's heap (default 256).
	HeapMB int
	// StartTimeout bounds the wait for quorum (default 60 s).
	StartTimeout time.Duration
	// ExtraConfig lines are appended to every zoo.cfg.
	ExtraConfig []string
	// JVMFlags are added to every server's java command line, before the
	// main class (e.g. SuperDigestFlag).
	JVMFlags []string
	// TLS, if set, makes the servers TLS-only: the Netty connection
	// factory on a secureClientPort and no plaintext client port.
	TLS *TLS
}

// TLS configures a TLS-only ensemble from PEM files (ZooKeeper reads PEM
// key and trust stores with ssl.*.type=PEM).
type TLS struct {
	// KeyStore holds the servers' certificate and private key (PEM, one
	// file); TrustStore the CA their clients' certificates chain to.
	KeyStore, TrustStore string
	// ClientAuth is ssl.clientAuth: "need" (default: clients present a
	// certificate), "want" or "none".
	ClientAuth string
	// Client is the harness's own client configuration (four-letter
	// words while waiting for the servers), for server name host.
	Client func(host string) *tls.Config
}

// SuperDigestFlag is the JVM flag that makes user:password ZooKeeper's
// super user (every permission, real ACLs in getACL); authenticate with
// digest user:password.
func SuperDigestFlag(user, password string) string {
	h := sha1.Sum([]byte(user + ":" + password))
	return "-Dzookeeper.DigestAuthenticationProvider.superDigest=" + user + ":" + base64.StdEncoding.EncodeToString(h[:])
}

// Server is one ZooKeeper server process of an Ensemble.
type Server struct {
	ID         int
	ClientPort int
	peerPort   int
	electPort  int
	dataDir    string
	cfgPath    string
	logPath    string

	mu  sync.Mutex
	cmd *exec.Cmd
	// quorumVia: where this server's quorum connections to server k go
	// instead of k's quorum port (RestartVia).
	quorumVia map[int]string
}

// Addr is the server's client address, "127.0.0.1:port".
func (s *Server) Addr() string { return fmt.Sprintf("127.0.0.1:%d", s.ClientPort) }

// LogPath is the file that receives the server's output.
func (s *Server) LogPath() string { return s.logPath }

// Running reports whether the server process is up (as far as we started it).
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd != nil
}

// Ensemble is a running set of ZooKeeper servers.
type Ensemble struct {
	cfg     Config
	Servers []*Server
	ownDir  bool
	closed  bool
	mu      sync.Mutex
}

// Start launches the servers and waits until they serve clients (a quorum
// formed). On error every started process is stopped.
func Start(ctx context.Context, cfg Config) (*Ensemble, error) {
	if cfg.Servers <= 0 {
		cfg.Servers = 3
	}
	if cfg.Name == "" {
		cfg.Name = "zk"
	}
	if cfg.TickTime == 0 {
		cfg.TickTime = 500
	}
	if cfg.MaxSessionTimeout == 0 {
		cfg.MaxSessionTimeout = 60000
	}
	if cfg.Java == "" {
		cfg.Java = DefaultJava
	}
	if cfg.ClassPath == "" {
		cfg.ClassPath = DefaultClassPath
		if cfg.TLS != nil {
			cfg.ClassPath += ":" + NettyClassPath
		}
	}
	if cfg.HeapMB == 0 {
		cfg.HeapMB = 256
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 60 * time.Second
	}
	if err := checkInstalled(cfg); err != nil {
		return nil, err
	}
	e := &Ensemble{cfg: cfg}
	if cfg.Dir == "" {
		dir, err := os.MkdirTemp("", "zktest-"+cfg.Name+"-")
		if err != nil {
			return nil, fmt.Errorf("zktest: temp dir: %w", err)
		}
		e.cfg.Dir, e.ownDir = dir, true
	}
	ports, err := freePorts(3 * cfg.Servers)
	if err != nil {
		e.Close()
		return nil, err
	}
	for i := 0; i < cfg.Servers; i++ {
		s := &Server{ID: i + 1, ClientPort: ports[3*i], peerPort: ports[3*i+1], electPort: ports[3*i+2]}
		s.dataDir = filepath.Join(e.cfg.Dir, fmt.Sprintf("%s%d", cfg.Name, s.ID))
		s.cfgPath = filepath.Join(s.dataDir, "zoo.cfg")
		s.logPath = filepath.Join(s.dataDir, "server.log")
		e.Servers = append(e.Servers, s)
	}
	for _, s := range e.Servers {
		if err := e.writeConfig(s); err != nil {
			e.Close()
			return nil, err
		}
	}
	for _, s := range e.Servers {
		if err := e.startServer(s); err != nil {
			e.Close()
			return nil, err
		}
	}
	if err := e.WaitServing(ctx, cfg.StartTimeout); err != nil {
		e.Close()
		return nil, err
	}
	return e, nil
}

func checkInstalled(cfg Config) error {
	if _, err := exec.LookPath(cfg.Java); err != nil {
		return fmt.Errorf("%w: %v", ErrNotInstalled, err)
	}
	for _, jar := range strings.Split(cfg.ClassPath, ":") {
		if _, err := os.Stat(jar); err != nil {
			return fmt.Errorf("%w: %v", ErrNotInstalled, err)
		}
	}
	return nil
}

// freePorts picks n distinct loopback ports with StablePort (below the
// ephemeral range, so no outgoing connection takes one before the servers
// bind them).
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for i := 0; i < n; i++ {
		p, err := StablePort()
		if err != nil {
			return nil, fmt.Errorf("zktest: reserve port: %w", err)
		}
		ports = append(ports, p)
	}
	return ports, nil
}

func (e *Ensemble) writeConfig(s *Server) error {
	if err := os.MkdirAll(s.dataDir, 0o755); err != nil {
		return fmt.Errorf("zktest: data dir: %w", err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "tickTime=%d\ninitLimit=20\nsyncLimit=10\n", e.cfg.TickTime)
	if t := e.cfg.TLS; t != nil {
		auth := t.ClientAuth
		if auth == "" {
			auth = "need"
		}
		fmt.Fprintf(&b, "dataDir=%s\nsecureClientPort=%d\nsecureClientPortAddress=127.0.0.1\n", s.dataDir, s.ClientPort)
		fmt.Fprintf(&b, "ssl.keyStore.location=%s\nssl.keyStore.type=PEM\nssl.trustStore.location=%s\nssl.trustStore.type=PEM\nssl.clientAuth=%s\n",
			t.KeyStore, t.TrustStore, auth)
	} else {
		fmt.Fprintf(&b, "dataDir=%s\nclientPort=%d\nclientPortAddress=127.0.0.1\n", s.dataDir, s.ClientPort)
	}
	fmt.Fprintf(&b, "maxClientCnxns=0\n4lw.commands.whitelist=*\nadmin.enableServer=false\n")
	fmt.Fprintf(&b, "maxSessionTimeout=%d\nautopurge.purgeInterval=0\n", e.cfg.MaxSessionTimeout)
	if len(e.Servers) > 1 {
		for _, p := range e.Servers {
			if via, ok := s.quorumVia[p.ID]; ok && p != s {
				host, port, err := net.SplitHostPort(via)
				if err != nil {
					return fmt.Errorf("zktest: quorum address of server %d for server %d: %w", p.ID, s.ID, err)
				}
				fmt.Fprintf(&b, "server.%d=%s:%s:%d\n", p.ID, host, port, p.electPort)
				continue
			}
			fmt.Fprintf(&b, "server.%d=127.0.0.1:%d:%d\n", p.ID, p.peerPort, p.electPort)
		}
	}
	for _, l := range e.cfg.ExtraConfig {
		b.WriteString(l + "\n")
	}
	if err := os.WriteFile(s.cfgPath, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("zktest: write zoo.cfg: %w", err)
	}
	if len(e.Servers) > 1 {
		if err := os.WriteFile(filepath.Join(s.dataDir, "myid"), []byte(fmt.Sprintf("%d\n", s.ID)), 0o644); err != nil {
			return fmt.Errorf("zktest: write myid: %w", err)
		}
	}
	return nil
}

func (e *Ensemble) startServer(s *Server) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return nil
	}
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("zktest: server log: %w", err)
	}
	main := "org.apache.zookeeper.server.quorum.QuorumPeerMain"
	args := []string{fmt.Sprintf("-Xmx%dm", e.cfg.HeapMB), "-XX:+UseSerialGC", "-Xss512k", "-XX:TieredStopAtLevel=1",
		"-Dzookeeper.admin.enableServer=false", "-Djava.net.preferIPv4Stack=true",
		"-Dorg.slf4j.simpleLogger.defaultLogLevel=warn"}
	if e.cfg.TLS != nil {
		args = append(args, "-Dzookeeper.serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory")
	}
	args = append(args, e.cfg.JVMFlags...)
	cmd := exec.Command(e.cfg.Java, append(args, "-cp", e.cfg.ClassPath, main, s.cfgPath)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("zktest: start server %d: %w", s.ID, err)
	}
	logf.Close()
	s.cmd = cmd
	return nil
}

// WaitServing waits until every running server answers "srvr" with a mode
// (leader, follower or standalone).
func (e *Ensemble) WaitServing(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for _, s := range e.Servers {
		if !s.Running() {
			continue
		}
		for {
			out, err := e.fourLetterWord(s, "srvr")
			if err == nil && strings.Contains(out, "Mode: ") {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("zktest: server %d (%s) not serving after %v (last: %v %q); see %s",
					s.ID, s.Addr(), timeout, err, out, s.logPath)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return nil
}

// Mode returns the server's role as "srvr" reports it ("leader", "follower",
// "standalone"), or an error when it does not answer.
func (s *Server) Mode() (string, error) {
	out, err := FourLetterWord(s.Addr(), "srvr", time.Second)
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(out, "\n") {
		if m, ok := strings.CutPrefix(line, "Mode: "); ok {
			return strings.TrimSpace(m), nil
		}
	}
	return "", fmt.Errorf("zktest: no mode in srvr output %q", out)
}

// Addrs lists the client addresses of all servers.
func (e *Ensemble) Addrs() []string {
	out := make([]string, len(e.Servers))
	for i, s := range e.Servers {
		out[i] = s.Addr()
	}
	return out
}

// ConnectString is Addrs joined by commas.
func (e *Ensemble) ConnectString() string { return strings.Join(e.Addrs(), ",") }

// Server returns the server with the given 1-based id.
func (e *Ensemble) Server(id int) *Server { return e.Servers[id-1] }

// Kill stops server id with SIGKILL (a crash, not a clean shutdown).
func (e *Ensemble) Kill(id int) error {
	s := e.Server(id)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return nil
	}
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	_ = s.cmd.Wait()
	s.cmd = nil
	return nil
}

// Restart starts server id again (after Kill) and waits until it serves.
func (e *Ensemble) Restart(ctx context.Context, id int) error {
	s := e.Server(id)
	if err := e.startServer(s); err != nil {
		return err
	}
	return e.WaitServing(ctx, e.cfg.StartTimeout)
}

// QuorumAddr is server id's quorum address: where followers connect to it
// when it leads.
func (e *Ensemble) QuorumAddr(id int) string {
	return fmt.Sprintf("127.0.0.1:%d", e.Server(id).peerPort)
}

// RestartVia kills server id and starts it again with its quorum
// connections to each server k going to via[k] instead of k's quorum port
// (a faultnet hop to QuorumAddr(k) makes the server lag behind its leader:
// it applies every transaction that much later); nil restores direct
// connections. It waits until the server serves.
func (e *Ensemble) RestartVia(ctx context.Context, id int, via map[int]string) error {
	if err := e.Kill(id); err != nil {
		return err
	}
	s := e.Server(id)
	s.mu.Lock()
	s.quorumVia = via
	s.mu.Unlock()
	if err := e.writeConfig(s); err != nil {
		return err
	}
	return e.Restart(ctx, id)
}

// ServerByPort finds the server listening on a client port, or nil.
func (e *Ensemble) ServerByPort(port int) *Server {
	for _, s := range e.Servers {
		if s.ClientPort == port {
			return s
		}
	}
	return nil
}

// Close kills every server and removes the temp dir it created. It is safe
// to call more than once.
func (e *Ensemble) Close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return
	}
	e.closed = true
	for _, s := range e.Servers {
		_ = e.Kill(s.ID)
	}
	if e.ownDir && os.Getenv("ZKTEST_KEEP") == "" {
		_ = os.RemoveAll(e.cfg.Dir)
	}
}

// fourLetterWord asks server s, over TLS on a TLS-only ensemble.
func (e *Ensemble) fourLetterWord(s *Server, word string) (string, error) {
	if t := e.cfg.TLS; t != nil && t.Client != nil {
		return zkclient.FourLetterWordTLS(s.Addr(), word, time.Second, t.Client("127.0.0.1"))
	}
	return FourLetterWord(s.Addr(), word, time.Second)
}

// FourLetterWord sends a four-letter admin command to addr and returns the
// whole answer (zkclient.FourLetterWord).
func FourLetterWord(addr, word string, timeout time.Duration) (string, error) {
	return zkclient.FourLetterWord(addr, word, timeout)
}
