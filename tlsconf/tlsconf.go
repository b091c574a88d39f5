// Package tlsconf builds zk-migrate's TLS configurations from PEM files:
// TLS 1.2 at least, optional mutual TLS, and certificates and CAs
// reloaded from disk without a restart.
//
// A Files value checks its files' modification time and size at most
// once a second, on each new handshake (server) or dial (client), and
// reloads them when they changed: connections made after a certificate
// was replaced on disk present the new one, existing connections keep
// theirs. A file that no longer parses (half written) is reported once
// and the previous good one stays in use. No goroutine is involved.
//
// Usage:
//
//	f, err := tlsconf.Load(tlsconf.Paths{Cert: "node.pem", Key: "node-key.pem", CA: "ca.pem"})
//	srv := &http.Server{TLSConfig: f.ServerConfig(tlsconf.RequireClientCert)}
//	conn := tls.Client(raw, f.ClientConfig("10.0.0.2"))
package tlsconf

import (
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
	stamps  map[string]stamp
	cert    *tls.Certificate
	pool    *x509.CertPool
	failed  string // the last reload error reported, so it is logged once
}

type stamp struct {
	mod  time.Time
	size int64
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
	f := &Files{p: p, log: p.Logger, stamps: map[string]stamp{}}
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

// reload reads every file; on error the current material stays.
func (f *Files) reload() error {
	stamps := map[string]stamp{}
	for _, p := range f.files() {
		st, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrConfig, err)
		}
		stamps[p] = stamp{st.ModTime(), st.Size()}
	}
	var cert *tls.Certificate
	if f.p.Cert != "" {
		c, err := tls.LoadX509KeyPair(f.p.Cert, f.p.Key)
		if err != nil {
			return fmt.Errorf("%w: certificate %s with key %s: %v", ErrConfig, f.p.Cert, f.p.Key, err)
		}
		cert = &c
	}
	var pool *x509.CertPool
	if f.p.CA != "" {
		b, err := os.ReadFile(f.p.CA)
		if err != nil {
			return fmt.Errorf("%w: CA: %v", ErrConfig, err)
		}
		pool = x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return fmt.Errorf("%w: CA %s holds no PEM certificate", ErrConfig, f.p.CA)
		}
	}
	f.cert, f.pool, f.stamps = cert, pool, stamps
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

func (f *Files) changed() bool {
	for _, p := range f.files() {
		st, err := os.Stat(p)
		if err != nil {
			return true // reload reports it
		}
		if s := f.stamps[p]; !s.mod.Equal(st.ModTime()) || s.size != st.Size() {
			return true
		}
	}
	return false
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
