package tlsconf

import (
	"crypto/tls"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/zk-migrate/zk-migrate/tlsconf/tlstest"
)

// serve accepts TLS connections until the listener closes, completing
// each handshake.
func serve(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	return ln.Addr().String()
}

// TestRotationMinVersionAndMutualTLS: a certificate replaced on disk is
// what the next connection sees, without a restart; TLS 1.1 is refused;
// with mutual TLS a client without a certificate is refused.
func TestRotationMinVersionAndMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca, err := tlstest.NewCA("ca")
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.pem")
	if err := ca.WriteCA(caFile); err != nil {
		t.Fatal(err)
	}
	srv, err := ca.Issue(dir, "server", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	cli, err := ca.Issue(dir, "client", "client")
	if err != nil {
		t.Fatal(err)
	}
	sf, err := Load(Paths{Cert: srv.Cert, Key: srv.Key, CA: caFile})
	if err != nil {
		t.Fatal(err)
	}
	cf, err := Load(Paths{Cert: cli.Cert, Key: cli.Key, CA: caFile})
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, sf.ServerConfig(RequireClientCert))
	serial := func() string {
		t.Helper()
		c, err := tls.Dial("tcp", addr, cf.ClientConfig("127.0.0.1"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	first := serial()
	want, _ := tlstest.Serial(srv.Cert)
	if first != want.String() {
		t.Fatalf("served %s, file holds %s", first, want)
	}
	if _, err := ca.Issue(dir, "server", "127.0.0.1"); err != nil { // rotated in place
		t.Fatal(err)
	}
	rotated, _ := tlstest.Serial(srv.Cert)
	deadline := time.Now().Add(5 * time.Second)
	for serial() != rotated.String() {
		if time.Now().After(deadline) {
			t.Fatal("the rotated certificate was never served")
		}
		time.Sleep(100 * time.Millisecond)
	}

	old := cf.ClientConfig("127.0.0.1")
	old.MinVersion, old.MaxVersion = tls.VersionTLS10, tls.VersionTLS11 // a client that offers only TLS 1.0 and 1.1
	if c, err := tls.Dial("tcp", addr, old); err == nil {
		c.Close()
		t.Fatal("TLS 1.1 accepted")
	} else if !strings.Contains(err.Error(), "protocol version") {
		t.Fatalf("TLS 1.1 refused, but not by the server's minimum version: %v", err)
	}
	anon, _ := Load(Paths{CA: caFile})
	c, err := tls.Dial("tcp", addr, anon.ClientConfig("127.0.0.1"))
	if err == nil {
		// TLS 1.3: the client learns of the refusal on its first read.
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 1))
		c.Close()
	}
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("a client without a certificate: %v", err)
	}
	if _, err := Load(Paths{Cert: srv.Cert}); err == nil {
		t.Fatal("a certificate without its key loaded")
	}
}
