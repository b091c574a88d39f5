package proxy_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/proxy"
	"github.com/zk-migrate/zk-migrate/proxy/proxytest"
	"github.com/zk-migrate/zk-migrate/tlsconf/tlstest"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// TestTLSOnBothSides runs a go-zookeeper client over mutual TLS through a
// two-ensemble proxy to two TLS-only ensembles: its writes reach the
// primary and the mirror (shadow session included: the ephemeral is owned
// by it on the secondary), a plaintext client and a client without a
// certificate are refused at the TLS port with a log line, TLS 1.1 is
// refused, a certificate replaced on disk is served to the next client
// without a restart, and after a flip the session goes on against B, with
// its writes mirrored back to A, all over TLS.
func TestTLSOnBothSides(t *testing.T) {
	sp := secureEnsembles(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	root := fmt.Sprintf("/tls-both-%d", time.Now().UnixNano())
	sa, sb := sp.superConn(t, sp.A), sp.superConn(t, sp.B)
	for _, c := range []*zkclient.Conn{sa, sb} {
		if _, err := c.Create(ctx, root, nil, zkclient.OpenACL, 0); err != nil {
			t.Fatal(err)
		}
	}
	p, logs := sp.startProxy(t)
	c, _ := connectTLS(t, []string{p.TLSAddr}, sp.appTLS(t), 6*time.Second)
	acl := zk.WorldACL(zk.PermAll)
	if _, err := c.Create(root+"/p", []byte("v1"), 0, acl); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Create(root+"/e", []byte("eph"), zk.FlagEphemeral, acl); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Set(root+"/p", []byte("v2"), -1); err != nil {
		t.Fatal(err)
	}
	waitMirrored(t, p)
	d, _, err := sb.Get(ctx, root+"/p")
	if err != nil || string(d) != "v2" {
		t.Fatalf("B over TLS: %s/p = %q, %v; want the mirrored v2", root, d, err)
	}
	st, err := sb.Exists(ctx, root+"/e")
	if err != nil {
		t.Fatalf("the ephemeral was not mirrored to B: %v", err)
	}
	if shadow, ok := p.ShadowSession(c.SessionID()); !ok || st.EphemeralOwner != shadow {
		t.Fatalf("the ephemeral on B is owned by 0x%x, want the shadow session 0x%x", st.EphemeralOwner, shadow)
	}

	// A plaintext ZooKeeper client on the TLS port: closed, logged.
	raw, err := net.Dial("tcp", p.TLSAddr)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = raw.Write(jute.Marshal(&jute.ConnectRequest{TimeOut: 6000, Passwd: make([]byte, 16)}))
	_ = raw.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := io.Copy(io.Discard, raw); err != nil || n > 7 {
		// A TLS server may answer an alert record (7 bytes) before closing.
		t.Fatalf("plaintext client on the TLS port: read %d bytes, err %v; want the connection closed", n, err)
	}
	raw.Close()
	logs.waitFor(t, "refused a plaintext connection on the TLS-only client port", 10*time.Second)
	if v := metricValue(t, p.Registry, "zkmigrate_proxy_client_connections_refused_total", "reason", "plaintext_on_tls"); v != 1 {
		t.Fatalf("client_connections_refused_total{reason=plaintext_on_tls} = %v, want 1", v)
	}

	// No client certificate under mutual TLS: refused.
	noCert := sp.appTLS(t)
	noCert.Certificates = nil
	if tc, err := tls.Dial("tcp", p.TLSAddr, noCert); err == nil {
		_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = tc.Write(jute.Marshal(&jute.ConnectRequest{TimeOut: 6000, Passwd: make([]byte, 16)}))
		if _, err := tc.Read(make([]byte, 1)); err == nil {
			t.Fatal("a client without a certificate was answered on the mutual-TLS port")
		}
		tc.Close()
	}
	logs.waitFor(t, "TLS handshake failed", 10*time.Second)

	// TLS 1.1 is refused.
	old := sp.appTLS(t)
	old.MinVersion, old.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
	if tc, err := tls.Dial("tcp", p.TLSAddr, old); err == nil {
		tc.Close()
		t.Fatal("the proxy's TLS port accepted TLS 1.1")
	}

	// A certificate replaced on disk is served to the next connection.
	if _, err := sp.clientCA.Issue(sp.Dir, "proxy", "127.0.0.1", "localhost"); err != nil {
		t.Fatal(err)
	}
	want, err := tlstest.Serial(sp.ProxyCert)
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		tc, err := tls.Dial("tcp", p.TLSAddr, sp.appTLS(t))
		if err != nil {
			t.Fatal(err)
		}
		got := tc.ConnectionState().PeerCertificates[0].SerialNumber
		tc.Close()
		if got.Cmp(want) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the proxy still serves certificate %v, not the one rotated on disk (%v)", got, want)
		}
	}

	// The flip: B serves, A receives the mirror, all over TLS.
	if err := p.Flip(ctx, 1, ensemble.Target); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Create(root+"/after", []byte("b"), 0, acl); err != nil {
		t.Fatalf("create through the proxy after the flip: %v", err)
	}
	if _, err := c.Set(root+"/p", []byte("v3"), -1); err != nil {
		t.Fatal(err)
	}
	waitMirrored(t, p)
	for name, conn := range map[string]*zkclient.Conn{"A": sa, "B": sb} {
		d, _, err := conn.Get(ctx, root+"/p")
		if err != nil || !bytes.Equal(d, []byte("v3")) {
			t.Fatalf("%s after the flip: %s/p = %q, %v; want v3", name, root, d, err)
		}
		if _, err := conn.Exists(ctx, root+"/after"); err != nil {
			t.Fatalf("%s after the flip: %s/after: %v", name, root, err)
		}
		if _, err := conn.Exists(ctx, root+"/e"); err != nil {
			t.Fatalf("%s after the flip: the client's ephemeral is gone: %v", name, err)
		}
	}
	if c.State() != zk.StateHasSession {
		t.Fatalf("the client's session state is %v after the flip", c.State())
	}
}

// TestPlaintextUpstreamToTLSOnlyEnsembleSaysWhy: a proxy without
// UpstreamTLS in front of TLS-only servers cannot open sessions (the
// servers close plaintext connections unanswered); the client is closed
// and the log line says to give the proxy --zk-tls-ca.
func TestPlaintextUpstreamToTLSOnlyEnsembleSaysWhy(t *testing.T) {
	sp := secureEnsembles(t)
	logs := &logBuffer{t: t}
	p, err := proxytest.Start(proxy.Config{Upstream: sp.A.Addrs(), Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if c, err := zkclient.Dial(ctx, []string{p.Addr}, zkclient.Options{SessionTimeout: 3 * time.Second, DialTimeout: 10 * time.Second}); err == nil {
		c.Close()
		t.Fatal("a session was opened through a plaintext proxy to TLS-only servers")
	}
	logs.waitFor(t, "no upstream server accepted the session", 20*time.Second)
	logs.waitFor(t, "start the proxy with --zk-tls-ca", time.Second)
}

// TestMigrationFromPlaintextToTLS: the proxy reaches the source ensemble
// in plaintext and the target over TLS (Config.PlaintextServers, the
// binary's --zk-tls-ensembles target). The mirror reaches B over TLS, and
// after the flip B serves over TLS while A receives the mirror in
// plaintext: the choice follows the servers' addresses, not the roles.
func TestMigrationFromPlaintextToTLS(t *testing.T) {
	sp := secureEnsembles(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	root := testRoot(t) // on ens, the plaintext one
	sb := sp.superConn(t, sp.B)
	if _, err := sb.Create(ctx, root, nil, zkclient.OpenACL, 0); err != nil {
		t.Fatal(err)
	}
	p, err := proxytest.Start(proxy.Config{FencePath: testFence(t), Upstream: ens.Addrs(), Secondary: sp.B.Addrs(),
		UpstreamTLS: sp.ZK.Client.ClientConfig, PlaintextServers: ens.Addrs(), DialTimeout: 10 * time.Second, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, _ := connect(t, []string{p.Addr}, 6*time.Second)
	if _, err := c.Create(root+"/x", []byte("a"), 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	waitMirrored(t, p)
	if d, _, err := sb.Get(ctx, root+"/x"); err != nil || string(d) != "a" {
		t.Fatalf("B (TLS) has %q, %v; want the mirrored write", d, err)
	}
	if err := p.Flip(ctx, 1, ensemble.Target); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Set(root+"/x", []byte("b"), -1); err != nil {
		t.Fatalf("write through the proxy after the flip (B over TLS): %v", err)
	}
	waitMirrored(t, p)
	if d, _, err := directConn(t).Get(root + "/x"); err != nil || string(d) != "b" {
		t.Fatalf("A (plaintext) has %q, %v after the flip; want the mirrored write", d, err)
	}
}

// TestMesosCClientThroughTLSUpstream is the Mesos case: ZooKeeper's C
// client has no TLS (Mesos pins 3.4; Debian's 3.8 library is built
// without SSL), so it stays on the sidecar's plaintext port while the
// proxy speaks TLS to both ensembles; its writes reach both.
func TestMesosCClientThroughTLSUpstream(t *testing.T) {
	requireFile(t, cliMTPath, "zookeeper-bin")
	sp := secureEnsembles(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	root := fmt.Sprintf("/c-tls-%d", time.Now().UnixNano())
	sa, sb := sp.superConn(t, sp.A), sp.superConn(t, sp.B)
	for _, c := range []*zkclient.Conn{sa, sb} {
		if _, err := c.Create(ctx, root, nil, zkclient.OpenACL, 0); err != nil {
			t.Fatal(err)
		}
	}
	p, _ := sp.startProxy(t)
	for _, cmd := range []string{"create " + root + "/m", "create " + root + "/m/log_replicas"} {
		out, _ := exec.Command(cliMTPath, "-h", p.Addr, "-c", cmd).CombinedOutput()
		if !strings.Contains(string(out), "rc = 0") {
			t.Fatalf("cli_mt %q through the proxy's plaintext port: %s", cmd, out)
		}
	}
	waitMirrored(t, p)
	for name, c := range map[string]*zkclient.Conn{"A": sa, "B": sb} {
		if _, err := c.Exists(ctx, root+"/m/log_replicas"); err != nil {
			t.Fatalf("%s over TLS: the C client's %s/m/log_replicas: %v", name, root, err)
		}
	}
}
