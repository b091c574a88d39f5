package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/zk-migrate/zk-migrate/control"
	"github.com/zk-migrate/zk-migrate/control/server"
	"github.com/zk-migrate/zk-migrate/raftstore"
)

// serveControlMetrics serves the control node's Prometheus metrics on addr
// (none if empty) until ctx ends: a registry of its own, as the proxy and
// the sync have, on its own plain-HTTP listener, so that Prometheus needs
// neither a token nor the API's TLS. The sync supervisor's health checks
// report to it; proxies come from the gossip pool when there is one.
func serveControlMetrics(ctx context.Context, addr string, node *raftstore.Node, sy *server.Syncer, fleet control.ProxyFleet, log *slog.Logger) error {
	if addr == "" {
		return nil
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := server.NewMetrics(reg, node, sy)
	if pv, ok := fleet.(server.ProxyView); ok {
		m.SetProxies(pv)
	}
	sy.Metrics = m
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics listen on %s: %w (choose another --metrics-addr, or empty to disable)", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = hs.Serve(ln) }()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = hs.Shutdown(sctx)
	}()
	log.Info("metrics listening", "addr", ln.Addr().String())
	return nil
}
