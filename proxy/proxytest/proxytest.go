// Package proxytest runs an in-process proxy on a loopback port for tests,
// the way net/http/httptest runs an HTTP server.
//
// Usage:
//
//	p, err := proxytest.Start(proxy.Config{Upstream: ens.Addrs()})
//	defer p.Close()
//	conn, _, _ := zk.Connect([]string{p.Addr}, 10*time.Second)
package proxytest

import (
	"crypto/tls"
	"fmt"
	"net"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/zk-migrate/zk-migrate/proxy"
)

// Proxy is a running in-process proxy.
type Proxy struct {
	*proxy.Server
	// Addr is the client address, "127.0.0.1:port".
	Addr string
	// TLSAddr is the TLS client address (StartTLS only).
	TLSAddr string
	// Registry holds the proxy's metrics.
	Registry *prometheus.Registry
	done     chan error
	tlsDone  chan error
}

// Start starts a proxy with cfg on 127.0.0.1:0. Metrics go to a fresh
// registry unless cfg.Metrics is set.
func Start(cfg proxy.Config) (*Proxy, error) { return StartOn("127.0.0.1:0", cfg) }

// Close stops the proxy and waits for its accept loop to end.
func (p *Proxy) Close() {
	p.Server.Close()
	<-p.done
	if p.tlsDone != nil {
		<-p.tlsDone
	}
}

// StartTLS is Start with a second listener, TLSAddr, whose clients speak
// TLS with clientTLS (Server.ServeTLS).
func StartTLS(cfg proxy.Config, clientTLS *tls.Config) (*Proxy, error) {
	p, err := Start(cfg)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		p.Close()
		return nil, fmt.Errorf("proxytest: listen: %w", err)
	}
	p.TLSAddr, p.tlsDone = ln.Addr().String(), make(chan error, 1)
	go func() { p.tlsDone <- p.Server.ServeTLS(ln, clientTLS) }()
	return p, nil
}

// StartOn is Start on a given address, for restarting a proxy where its
// clients expect it.
func StartOn(addr string, cfg proxy.Config) (*Proxy, error) {
	reg := prometheus.NewRegistry()
	if cfg.Metrics == nil {
		cfg.Metrics = proxy.NewMetrics(reg)
	}
	srv, err := proxy.New(cfg)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("proxytest: listen %s: %w", addr, err)
	}
	p := &Proxy{Server: srv, Addr: ln.Addr().String(), Registry: reg, done: make(chan error, 1)}
	go func() { p.done <- srv.Serve(ln) }()
	return p, nil
}
