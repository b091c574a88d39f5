package tlsconf

import (
	"crypto/tls"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
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

// TestReloadRefusesCertificatesOutsideTheirValidity: a certificate
// replaced on disk by one that has expired, or is not valid yet, is not
// taken: the previous one is still served, and the refusal is logged with
// the reason. Load refuses such a certificate outright.
func TestReloadRefusesCertificatesOutsideTheirValidity(t *testing.T) {
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
	logs := &strings.Builder{}
	var mu sync.Mutex
	logger := slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return logs.Write(p) }), nil))
	sf, err := Load(Paths{Cert: srv.Cert, Key: srv.Key, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	good, _ := tlstest.Serial(srv.Cert)
	cf, err := Load(Paths{CA: caFile})
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, sf.ServerConfig(NoClientCert))
	served := func() string {
		t.Helper()
		cfg := cf.ClientConfig("127.0.0.1")
		cfg.InsecureSkipVerify = true // to see what is served, expired or not
		c, err := tls.Dial("tcp", addr, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	now := time.Now()
	for _, c := range []struct {
		name string
		o    tlstest.Options
		want string
	}{
		{"expired", tlstest.Options{NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Hour)}, "expired at"},
		{"not yet valid", tlstest.Options{NotBefore: now.Add(time.Hour), NotAfter: now.Add(48 * time.Hour)}, "is not valid before"},
	} {
		if _, err := ca.IssueWith(dir, "server", c.o, "127.0.0.1"); err != nil {
			t.Fatal(err)
		}
		if _, err := Load(Paths{Cert: srv.Cert, Key: srv.Key}); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("%s: Load: %v, want %q", c.name, err, c.want)
		}
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			mu.Lock()
			seen := strings.Contains(logs.String(), c.want)
			mu.Unlock()
			if seen {
				break
			}
			if got := served(); got != good.String() {
				t.Fatalf("%s certificate taken on reload: served %s, want the previous %s", c.name, got, good)
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: no refusal logged:\n%s", c.name, logs.String())
			}
		}
		if got := served(); got != good.String() {
			t.Fatalf("%s certificate taken on reload: served %s, want the previous %s", c.name, got, good)
		}
	}
}

// TestReloadSeesAReplacementOfTheSameSizeAndTime: a certificate swapped
// for another of exactly the same size, with the old modification time
// put back (a restore from backup, a copy with preserved times), is still
// seen and served: changes are detected by content.
func TestReloadSeesAReplacementOfTheSameSizeAndTime(t *testing.T) {
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
	stat := func(p string) os.FileInfo {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	certSt, keySt := stat(srv.Cert), stat(srv.Key)
	sf, err := Load(Paths{Cert: srv.Cert, Key: srv.Key})
	if err != nil {
		t.Fatal(err)
	}
	cf, err := Load(Paths{CA: caFile})
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, sf.ServerConfig(NoClientCert))
	// Issue into another directory until the new pair has the same sizes
	// (ECDSA signatures vary by a byte or two), then move it into place
	// and restore the old times.
	other := t.TempDir()
	var next tlstest.Issued
	for i := 0; ; i++ {
		if next, err = ca.Issue(other, "server", "127.0.0.1"); err != nil {
			t.Fatal(err)
		}
		if stat(next.Cert).Size() == certSt.Size() && stat(next.Key).Size() == keySt.Size() {
			break
		}
		if i == 200 {
			t.Fatal("no certificate of the same size in 200 tries")
		}
	}
	for from, to := range map[string]string{next.Cert: srv.Cert, next.Key: srv.Key} {
		if err := os.Rename(from, to); err != nil {
			t.Fatal(err)
		}
	}
	for p, st := range map[string]os.FileInfo{srv.Cert: certSt, srv.Key: keySt} {
		if err := os.Chtimes(p, st.ModTime(), st.ModTime()); err != nil {
			t.Fatal(err)
		}
		if now := stat(p); now.Size() != st.Size() || !now.ModTime().Equal(st.ModTime()) {
			t.Fatalf("%s: size and time not restored", p)
		}
	}
	want, _ := tlstest.Serial(srv.Cert)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		c, err := tls.Dial("tcp", addr, cf.ClientConfig("127.0.0.1"))
		if err != nil {
			t.Fatal(err)
		}
		got := c.ConnectionState().PeerCertificates[0].SerialNumber
		c.Close()
		if got.Cmp(want) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("a replacement of the same size and time was never served: still %s, the file holds %s", got, want)
		}
	}
}

type writerFunc func([]byte) (int, error)

func (w writerFunc) Write(p []byte) (int, error) { return w(p) }
