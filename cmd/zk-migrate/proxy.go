package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/urfave/cli/v2"

	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/membership"
	"github.com/zk-migrate/zk-migrate/proxy"
)

func proxyCommand() *cli.Command {
	return &cli.Command{
		Name:  "proxy",
		Usage: "run the ZooKeeper sidecar proxy in front of an ensemble",
		Description: `Runs a ZooKeeper-compatible proxy. Point the local Mesos process at it
(--zk=zk://127.0.0.1:2181/mesos) and give it the real ensemble as --upstream.

Every session keeps its id and password. When the upstream server a session
is attached to dies, the proxy moves the session to another server of the
ensemble, replaying its credentials and watches; requests that were in flight
get CONNECTIONLOSS (the standard "may or may not have happened" answer) and
the session does not expire.

Sessions expire as on ZooKeeper: when nothing (no request, no ping) has been
heard from a client for its session timeout, connected or not, the proxy
closes its session upstream, so a hung process loses its ephemerals and leadership within the
timeout plus timeout/10 + 1 s. Per-session and per-connection limits
(--max-client-backlog, --max-pending, --max-credentials, --handshake-timeout,
--max-connections, --max-connections-per-ip, --four-letter-words) keep one
broken or hostile client from exhausting the proxy.

Example:

   zk-migrate proxy --listen 127.0.0.1:2181 \
       --upstream zk1:2181,zk2:2181,zk3:2181 --metrics-addr 127.0.0.1:9404

Check it:  echo ruok | nc 127.0.0.1 2181      (answers imok)
           curl -s 127.0.0.1:9404/metrics | grep zkmigrate_proxy`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "listen", Value: "127.0.0.1:2181", Usage: "address clients connect to", EnvVars: []string{"ZKM_LISTEN"}},
			&cli.StringFlag{Name: "upstream", Required: true, Usage: "ZooKeeper servers of the ensemble, host:port,host:port,...", EnvVars: []string{"ZKM_UPSTREAM"}},
			&cli.StringFlag{Name: "metrics-addr", Value: "127.0.0.1:9404", Usage: "address of the Prometheus /metrics endpoint (empty: off)", EnvVars: []string{"ZKM_METRICS_ADDR"}},
			&cli.IntFlag{Name: "jute-maxbuffer", Value: jute.DefaultMaxBuffer, Usage: "largest client request in bytes, as the servers' jute.maxbuffer"},
			&cli.IntFlag{Name: "max-client-backlog", Value: 2 << 20, Usage: "bytes of replies queued for a client that does not read them; beyond, the session stops reading its server and its client"},
			&cli.IntFlag{Name: "max-pending", Value: 1000, Usage: "requests in flight per session; beyond, the proxy stops reading the client (ZooKeeper's outstanding limit)"},
			&cli.IntFlag{Name: "max-credentials", Value: 16, Usage: "distinct addauth credentials a session may hold; beyond, addauth is answered AUTHFAILED"},
			&cli.DurationFlag{Name: "handshake-timeout", Value: 10 * time.Second, Usage: "a new connection must send its ConnectRequest (or four-letter word) within this time"},
			&cli.IntFlag{Name: "max-connections", Value: 4096, Usage: "open client connections in all; beyond, new ones are closed at once"},
			&cli.IntFlag{Name: "max-connections-per-ip", Value: 1024, Usage: "open client connections from one address, as ZooKeeper's maxClientCnxns"},
			&cli.StringFlag{Name: "four-letter-words", Value: strings.Join(proxy.DefaultFourLetterWords, ","), Usage: "four-letter words answered, as ZooKeeper's 4lw.commands.whitelist (* for all); dump, cons, wchp, wchc expose other clients"},
			&cli.DurationFlag{Name: "dial-timeout", Value: 3 * time.Second, Usage: "timeout of one connection attempt to an upstream server"},
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error"},
			&cli.StringFlag{Name: "gossip-addr", Usage: "join the control plane's gossip pool on host:port (advertises role, sessions, primary)"},
			&cli.StringSliceFlag{Name: "gossip-join", Usage: "gossip members to join, host:port (repeatable)"},
			gossipKeyFlag(),
			&cli.StringFlag{Name: "name", Usage: "this proxy's name in the gossip pool (default proxy-HOSTNAME)"},
		},
		Action: runProxy,
	}
}

func parseUpstream(s string) ([]string, error) {
	var out []string
	for _, a := range strings.Split(s, ",") {
		a = strings.TrimSpace(a)
		if a == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(a); err != nil {
			if !strings.Contains(a, ":") {
				return nil, fmt.Errorf("--upstream %q: missing port (ZooKeeper's client port is usually 2181: %s:2181)", a, a)
			}
			return nil, fmt.Errorf("--upstream %q: %v (want host:port)", a, err)
		}
		out = append(out, a)
	}
	if len(out) == 0 {
		return nil, errors.New("--upstream is empty: give the ensemble as host:port,host:port,...")
	}
	return out, nil
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}

func runProxy(c *cli.Context) error {
	upstream, err := parseUpstream(c.String("upstream"))
	if err != nil {
		return usageError("%v", err)
	}
	log, err := newLogger(c.String("log-level"))
	if err != nil {
		return usageError("%v", err)
	}
	if mb := c.Int("jute-maxbuffer"); mb < 1024 {
		return usageError("--jute-maxbuffer %d: must be at least 1024 bytes (ZooKeeper's default is %d)", mb, jute.DefaultMaxBuffer)
	}
	for _, f := range []string{"max-client-backlog", "max-pending", "max-credentials", "max-connections", "max-connections-per-ip"} {
		if c.Int(f) < 1 {
			return usageError("--%s %d: must be at least 1 (the defaults are documented in --help)", f, c.Int(f))
		}
	}
	if c.Duration("handshake-timeout") <= 0 {
		return usageError("--handshake-timeout %v: must be positive (default 10s)", c.Duration("handshake-timeout"))
	}
	words := []string{}
	for _, w := range strings.Split(c.String("four-letter-words"), ",") {
		if w = strings.TrimSpace(w); w != "" {
			words = append(words, w)
		}
	}
	if os.Getenv("GOGC") == "" {
		// The proxy's live heap is small (about 40 KB a session) and its
		// garbage is per-request; collecting less often costs little
		// memory and gives the CPU back to the requests.
		debug.SetGCPercent(400)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	srv, err := proxy.New(proxy.Config{
		Upstream:            upstream,
		MaxFrame:            c.Int("jute-maxbuffer") + jute.DefaultMaxBufferExtra,
		DialTimeout:         c.Duration("dial-timeout"),
		MaxClientBacklog:    c.Int("max-client-backlog"),
		MaxPending:          c.Int("max-pending"),
		MaxCredentials:      c.Int("max-credentials"),
		HandshakeTimeout:    c.Duration("handshake-timeout"),
		MaxConnections:      c.Int("max-connections"),
		MaxConnectionsPerIP: c.Int("max-connections-per-ip"),
		FourLetterWords:     words,
		Metrics:             proxy.NewMetrics(reg),
		Logger:              log,
	})
	if err != nil {
		return usageError("%v", err)
	}
	ln, err := net.Listen("tcp", c.String("listen"))
	if err != nil {
		return fmt.Errorf("listen on %s: %w (is another ZooKeeper or proxy already there? choose another --listen)", c.String("listen"), err)
	}
	var metricsSrv *http.Server
	if addr := c.String("metrics-addr"); addr != "" {
		mln, err := net.Listen("tcp", addr)
		if err != nil {
			ln.Close()
			return fmt.Errorf("metrics listen on %s: %w (choose another --metrics-addr, or empty to disable)", addr, err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
		metricsSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = metricsSrv.Serve(mln) }()
		log.Info("metrics listening", "addr", mln.Addr().String())
	}
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("proxy listening", "addr", ln.Addr().String(), "upstream", upstream)
	if addr := c.String("gossip-addr"); addr != "" {
		name := c.String("name")
		if name == "" {
			host, _ := os.Hostname()
			name = "proxy-" + host
		}
		key, err := gossipKey(c)
		if err != nil {
			srv.Close()
			return err
		}
		agent, err := membership.Join(membership.Config{Name: name, BindAddr: addr, Seeds: c.StringSlice("gossip-join"),
			Meta: membership.Meta{Role: membership.RoleProxy, Primary: "A"}, SecretKey: key})
		if err != nil {
			srv.Close()
			return err
		}
		defer agent.Leave()
		go advertiseSessions(ctx, agent, srv)
	}
	select {
	case <-ctx.Done():
		log.Info("shutting down: client sessions stay alive upstream until their timeout")
	case err = <-errc:
	}
	srv.Close()
	if metricsSrv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = metricsSrv.Shutdown(sctx)
		cancel()
	}
	if err != nil && !errors.Is(err, proxy.ErrServerClosed) {
		return err
	}
	return nil
}

// advertiseSessions keeps the proxy's session count current in the pool.
func advertiseSessions(ctx context.Context, agent *membership.Agent, srv *proxy.Server) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	last := -1
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if n := srv.SessionCount(); n != last {
			last = n
			_ = agent.SetMeta(func(m *membership.Meta) { m.Sessions = n })
		}
	}
}
