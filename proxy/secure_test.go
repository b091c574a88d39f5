package proxy_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/proxy"
	"github.com/zk-migrate/zk-migrate/proxy/proxytest"
	"github.com/zk-migrate/zk-migrate/tlsconf"
	"github.com/zk-migrate/zk-migrate/tlsconf/tlstest"
	"github.com/zk-migrate/zk-migrate/zkclient"
	"github.com/zk-migrate/zk-migrate/zktest"
)

// The secure pair: two TLS-only ensembles (A with three servers, B with
// one) with ZooKeeper's SASL provider (DIGEST-MD5 users alice and bob in a
// JAAS file, as ZooKeeper's own SaslAuthTest sets it up) and a super
// digest, shared by the TLS, SASL and ACL tests and stopped by TestMain.
type securePair struct {
	A, B *zktest.Ensemble
	// ZK is the ensembles' CA and client certificate (the proxy's upstream
	// identity).
	ZK *zktest.TLSMaterial
	// Dir holds the JAAS file and the proxy's client-side certificates.
	Dir string
	// ProxyCert/ProxyKey serve the proxy's TLS client port; ClientCA signed
	// them and the clients' certificates (AppCert/AppKey).
	ProxyCert, ProxyKey, ClientCA, AppCert, AppKey string
	clientCA                                       *tlstest.CA
}

const (
	superUser, superPw = "super", "pw"
	alicePw, bobPw     = "alice-secret", "bob-secret"
)

var (
	secureOnce sync.Once
	secure     *securePair
	secureErr  error
)

func secureEnsembles(t *testing.T) *securePair {
	t.Helper()
	if testing.Short() {
		t.Skip("starts two TLS ensembles")
	}
	secureOnce.Do(func() { secure, secureErr = startSecurePair() })
	if secureErr != nil {
		t.Fatal(secureErr)
	}
	return secure
}

func startSecurePair() (*securePair, error) {
	dir, err := os.MkdirTemp("", "zkm-secure-")
	if err != nil {
		return nil, err
	}
	sp := &securePair{Dir: dir}
	if sp.ZK, err = zktest.MakeTLS(dir); err != nil {
		return nil, err
	}
	jaas := filepath.Join(dir, "jaas.conf")
	if err := os.WriteFile(jaas, []byte(fmt.Sprintf(`Server {
  org.apache.zookeeper.server.auth.DigestLoginModule required
  user_alice="%s"
  user_bob="%s";
};
`, alicePw, bobPw)), 0o600); err != nil {
		return nil, err
	}
	flags := []string{zktest.SuperDigestFlag(superUser, superPw), "-Djava.security.auth.login.config=" + jaas}
	extra := []string{"authProvider.sasl=org.apache.zookeeper.server.auth.SASLAuthenticationProvider"}
	ctx := context.Background()
	if sp.A, err = zktest.Start(ctx, zktest.Config{Servers: 3, Name: "sec-a", TLS: sp.ZK.Server, JVMFlags: flags, ExtraConfig: extra}); err != nil {
		return nil, err
	}
	if sp.B, err = zktest.Start(ctx, zktest.Config{Servers: 1, Name: "sec-b", TLS: sp.ZK.Server, JVMFlags: flags, ExtraConfig: extra}); err != nil {
		sp.A.Close()
		return nil, err
	}
	if sp.clientCA, err = tlstest.NewCA("proxy clients CA"); err != nil {
		return nil, err
	}
	sp.ClientCA = filepath.Join(dir, "client-ca.pem")
	if err := sp.clientCA.WriteCA(sp.ClientCA); err != nil {
		return nil, err
	}
	srv, err := sp.clientCA.Issue(dir, "proxy", "127.0.0.1", "localhost")
	if err != nil {
		return nil, err
	}
	app, err := sp.clientCA.Issue(dir, "app", "app")
	if err != nil {
		return nil, err
	}
	sp.ProxyCert, sp.ProxyKey, sp.AppCert, sp.AppKey = srv.Cert, srv.Key, app.Cert, app.Key
	return sp, nil
}

func (sp *securePair) close() {
	if sp == nil {
		return
	}
	sp.A.Close()
	sp.B.Close()
	os.RemoveAll(sp.Dir)
}

// startSecureProxy starts a two-ensemble proxy over the pair (A primary)
// speaking TLS upstream, with a mutual-TLS client port (TLSAddr) beside
// the plaintext one. The proxy's log goes to the test and to the returned
// buffer.
func (sp *securePair) startProxy(t *testing.T) (*proxytest.Proxy, *logBuffer) {
	t.Helper()
	files, err := tlsconf.Load(tlsconf.Paths{Cert: sp.ProxyCert, Key: sp.ProxyKey, CA: sp.ClientCA})
	if err != nil {
		t.Fatal(err)
	}
	logs := &logBuffer{t: t}
	p, err := proxytest.StartTLS(proxy.Config{
		FencePath: testFence(t), Upstream: sp.A.Addrs(), Secondary: sp.B.Addrs(),
		UpstreamTLS: sp.ZK.Client.ClientConfig,
		// A JVM's TLS handshake on a loaded two-core machine can take
		// seconds; the default 3 s bound failed a flip's dial once.
		DialTimeout:    10 * time.Second,
		SASLMirrorAuth: []zkclient.Auth{{Scheme: "digest", Secret: []byte(superUser + ":" + superPw)}},
		Logger:         slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}, files.ServerConfig(tlsconf.RequireClientCert))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p, logs
}

// superConn is a super-user session on e over TLS: it reads every ACL as
// it is.
func (sp *securePair) superConn(t *testing.T, e *zktest.Ensemble) *zkclient.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := zkclient.Dial(ctx, e.Addrs(), zkclient.Options{TLS: sp.ZK.Client.ClientConfig, SessionTimeout: 10 * time.Second,
		Auth: []zkclient.Auth{{Scheme: "digest", Secret: []byte(superUser + ":" + superPw)}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// appTLS is a proxy client's TLS configuration: it trusts the client CA
// and presents the app certificate.
func (sp *securePair) appTLS(t *testing.T) *tls.Config {
	t.Helper()
	f, err := tlsconf.Load(tlsconf.Paths{Cert: sp.AppCert, Key: sp.AppKey, CA: sp.ClientCA})
	if err != nil {
		t.Fatal(err)
	}
	return f.ClientConfig("127.0.0.1")
}

// connectTLS opens a go-zookeeper session to addrs over TLS with cfg.
func connectTLS(t *testing.T, addrs []string, cfg *tls.Config, timeout time.Duration) (*zk.Conn, <-chan zk.Event) {
	t.Helper()
	dialer := func(network, address string, d time.Duration) (net.Conn, error) {
		return tls.DialWithDialer(&net.Dialer{Timeout: d}, network, address, cfg)
	}
	c, ev, err := zk.Connect(addrs, timeout, zk.WithLogInfo(false), zk.WithDialer(dialer))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	deadline := time.After(20 * time.Second)
	for c.State() != zk.StateHasSession {
		select {
		case <-ev:
		case <-deadline:
			t.Fatalf("no session over TLS through %v (state %v)", addrs, c.State())
		}
	}
	return c, ev
}

// logBuffer keeps a proxy's log lines and passes them to the test log.
type logBuffer struct {
	t  *testing.T
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.b.Write(p)
	l.mu.Unlock()
	l.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// waitFor waits up to d for a log line containing s.
func (l *logBuffer) waitFor(t *testing.T, s string, d time.Duration) {
	t.Helper()
	for deadline := time.Now().Add(d); ; time.Sleep(20 * time.Millisecond) {
		l.mu.Lock()
		ok := strings.Contains(l.b.String(), s)
		l.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the proxy did not log %q within %v", s, d)
		}
	}
}
