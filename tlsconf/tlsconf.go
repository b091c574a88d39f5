// Package tlsconf builds zk-migrate's TLS configurations from PEM files:
// TLS 1.2 at least, optional mutual TLS, and certificates and CAs
// reloaded from disk without a restart.
//
// A Files value reads its files and compares a SHA-256 of their bytes
// with the one it loaded at most once a second, on each new handshake
// (server) or dial (client), and reloads them when the content changed
// (whatever their size and modification time say): connections made after
// a certificate was replaced on disk present the new one, existing
// connections keep theirs. A file that no longer parses (half written), a
// key that does not match, or a certificate that is expired or not valid
// yet is reported once and the previous good one stays in use. No
// goroutine is involved.
//
// Usage:
//
//	f, err := tlsconf.Load(tlsconf.Paths{Cert: "node.pem", Key: "node-key.pem", CA: "ca.pem"})
//	srv := &http.Server{TLSConfig: f.ServerConfig(tlsconf.RequireClientCert)}
//	conn := tls.Client(raw, f.ClientConfig("10.0.0.2"))
package tlsconf

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// MinVersion is the lowest TLS version zk-migrate speaks or accepts.
const MinVersion = tls.VersionTLS12

// Paths names the PEM files. Cert and Key are this side's certificate
// chain and key (a server's, or a client's for mutual TLS); CA is the
// certificate authority bundle the peer's certificate must chain to (for
// a server: the client CA, which turns on mutual TLS).
type Paths struct {
	Cert, Key, CA string
	// Logger reports reloads and files that fail to reload.
	Logger *slog.Logger
}

// ClientAuth says whether a server asks for client certificates.
type ClientAuth int

// Client authentication modes.
const (
	// NoClientCert: any client may connect (server authentication only).
	NoClientCert ClientAuth = iota
	// RequireClientCert: the client must present a certificate that
	// chains to Paths.CA (mutual TLS).
	RequireClientCert
)

// Files holds the current certificate and CA pool.
type Files struct {
	p   Paths
	log *slog.Logger

	mu      sync.Mutex
	checked time.Time
	sum     [sha256.Size]byte // of the files' bytes as loaded
	cert    *tls.Certificate
	pool    *x509.CertPool
	failed  string // the last reload error reported, so it is logged once
}

// ErrConfig means the TLS files are missing, unreadable or inconsistent.
var ErrConfig = errors.New("tlsconf: bad TLS configuration")

// Load reads the files once and returns Files that reload them when they
// change. Cert and Key go together; CA may be alone (a client that only
// verifies servers).
func Load(p Paths) (*Files, error) {
	if (p.Cert == "") != (p.Key == "") {
		return nil, fmt.Errorf("%w: give the certificate and its key together", ErrConfig)
	}
	if p.Cert == "" && p.CA == "" {
		return nil, fmt.Errorf("%w: no certificate and no CA", ErrConfig)
	}
	f := &Files{p: p, log: p.Logger}
	if f.log == nil {
		f.log = slog.Default()
	}
	if err := f.reload(); err != nil {
		return nil, err
	}
	f.checked = time.Now()
	return f, nil
}

// HasCert reports whether a certificate (and key) is configured.
func (f *Files) HasCert() bool { return f.p.Cert != "" }

// HasCA reports whether a CA is configured.
func (f *Files) HasCA() bool { return f.p.CA != "" }

func (f *Files) files() []string {
	var out []string
	for _, p := range []string{f.p.Cert, f.p.Key, f.p.CA} {
		if p != "" {
			out = append(out, p)
		}
	}
	return out
}

// read returns the files' bytes, by path, and the SHA-256 of them all.
func (f *Files) read() (map[string][]byte, [sha256.Size]byte, error) {
	h := sha256.New()
	out := map[string][]byte{}
	for _, p := range f.files() {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, [sha256.Size]byte{}, fmt.Errorf("%w: %v", ErrConfig, err)
		}
		out[p] = b
		fmt.Fprintf(h, "%s\x00%d\x00", p, len(b))
		h.Write(b)
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return out, sum, nil
}

// reload reads every file and takes it only if all of it is usable; on
// error the current material stays.
func (f *Files) reload() error {
	files, sum, err := f.read()
	if err != nil {
		return err
	}
	var cert *tls.Certificate
	if f.p.Cert != "" {
		c, err := tls.X509KeyPair(files[f.p.Cert], files[f.p.Key])
		if err != nil {
			return fmt.Errorf("%w: certificate %s with key %s: %v", ErrConfig, f.p.Cert, f.p.Key, err)
		}
		if c.Leaf == nil && len(c.Certificate) > 0 { // set by X509KeyPair since Go 1.23, unless GODEBUG x509keypairleaf=0
			c.Leaf, _ = x509.ParseCertificate(c.Certificate[0])
		}
		if err := checkValidity(f.p.Cert, c.Leaf, time.Now()); err != nil {
			return err
		}
		cert = &c
	}
	var pool *x509.CertPool
	if f.p.CA != "" {
		pool = x509.NewCertPool()
		if !pool.AppendCertsFromPEM(files[f.p.CA]) {
			return fmt.Errorf("%w: CA %s holds no PEM certificate", ErrConfig, f.p.CA)
		}
	}
	f.cert, f.pool, f.sum = cert, pool, sum
	return nil
}

// checkValidity refuses a certificate outside its validity period: served
// or presented, every peer would refuse it.
func checkValidity(path string, leaf *x509.Certificate, now time.Time) error {
	if leaf == nil {
		return fmt.Errorf("%w: certificate %s: no leaf certificate", ErrConfig, path)
	}
	switch {
	case now.After(leaf.NotAfter):
		return fmt.Errorf("%w: certificate %s (%q) expired at %s: peers would refuse it; renew it", ErrConfig, path, leaf.Subject.CommonName, leaf.NotAfter.UTC().Format(time.RFC3339))
	case now.Before(leaf.NotBefore):
		return fmt.Errorf("%w: certificate %s (%q) is not valid before %s: peers would refuse it; check the issuer's clock or wait", ErrConfig, path, leaf.Subject.CommonName, leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	return nil
}

// current returns the certificate and pool, reloading them first when a
// file changed (checked at most once a second).
func (f *Files) current() (*tls.Certificate, *x509.CertPool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if now := time.Now(); now.Sub(f.checked) >= time.Second {
		f.checked = now
		if f.changed() {
			if err := f.reload(); err != nil {
				if msg := err.Error(); msg != f.failed {
					f.failed = msg
					f.log.Error("tls: changed certificate files do not load; still using the previous ones", "err", err,
						"hint", "write the new certificate and key, then rename them into place")
				}
			} else {
				f.failed = ""
				f.log.Info("tls: certificate files changed on disk: reloaded; new connections use them", "cert", f.p.Cert, "ca", f.p.CA)
			}
		}
	}
	return f.cert, f.pool
}

// changed says whether the files' content differs from what was loaded
// (a file replaced with one of the same size and time is seen too).
func (f *Files) changed() bool {
	_, sum, err := f.read()
	return err != nil || sum != f.sum // on error, reload reports it
}

// ServerConfig is a server's configuration: each handshake gets the
// current certificate and, with RequireClientCert, the current client CA.
func (f *Files) ServerConfig(auth ClientAuth) *tls.Config {
	return &tls.Config{
		MinVersion: MinVersion,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			cert, pool := f.current()
			if cert == nil {
				return nil, fmt.Errorf("%w: no server certificate", ErrConfig)
			}
			c := &tls.Config{MinVersion: MinVersion, Certificates: []tls.Certificate{*cert}}
			if auth == RequireClientCert {
				c.ClientAuth, c.ClientCAs = tls.RequireAndVerifyClientCert, pool
			}
			return c, nil
		},
	}
}

// ClientConfig is a client's configuration for one dial to serverName
// (a host name or IP the server's certificate must name): it verifies the
// server against the current CA (the system roots without one) and
// presents the current certificate, if any, for mutual TLS. Make a new one
// per dial so a reload is seen.
func (f *Files) ClientConfig(serverName string) *tls.Config {
	cert, pool := f.current()
	c := &tls.Config{MinVersion: MinVersion, ServerName: serverName, RootCAs: pool}
	if cert != nil {
		c.Certificates = []tls.Certificate{*cert}
	}
	return c
}
