package main

import (
	"context"
	"encoding/json"
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

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/membership"
	"github.com/zk-migrate/zk-migrate/proxy"
)

func proxyCommand() *cli.Command {
	return &cli.Command{
		Name:  "proxy",
		Usage: "run the ZooKeeper sidecar proxy in front of an ensemble (or two, during a migration)",
		Description: `Runs a ZooKeeper-compatible proxy. Point the local Mesos process at it
(--zk=zk://127.0.0.1:2181/mesos) and give it the real ensemble as --upstream.

During a migration give it both ensembles instead, --source (A) and --target
(B), as in migration.yaml: every client session then also has a shadow
session on the secondary ensemble (the one that is not --primary, default
target), and every write the primary acknowledges is mirrored to the
secondary, ephemerals owned by the client's shadow session. Replies never
wait for the secondary; if it is slow or down, writes queue in a bounded
mirror backlog (zkmigrate_proxy_mirror_backlog, _lag_seconds, _failures_total)
and are copied when it returns.

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

TLS, each hop on its own (README, "TLS and SASL on the proxy"): a TLS
client port (--secure-listen, --client-tls-*), TLS to ZooKeeper's
secureClientPort (--zk-tls-*), the admin endpoint over HTTPS
(--admin-tls-*). SASL clients authenticate with the primary through the
proxy; when their session moves (server death, flip) the proxy closes their
connection so they authenticate again.

Examples:

   zk-migrate proxy --listen 127.0.0.1:2181 \
       --upstream zk1:2181,zk2:2181,zk3:2181 --metrics-addr 127.0.0.1:9404

   zk-migrate proxy --listen 127.0.0.1:2181 \
       --source zk1:2181,zk2:2181,zk3:2181 --target zkb1:2181,zkb2:2181,zkb3:2181 \
       --admin-addr 127.0.0.1:9405 --state-dir /var/lib/zk-migrate/proxy

   zk-migrate proxy --listen 127.0.0.1:2181 --secure-listen 127.0.0.1:2281 \
       --client-tls-cert proxy.pem --client-tls-key proxy-key.pem --client-tls-ca apps-ca.pem \
       --upstream zk1:2281,zk2:2281,zk3:2281 --zk-tls-ca zk-ca.pem --zk-tls-cert me.pem --zk-tls-key me-key.pem

Check it:  echo ruok | nc 127.0.0.1 2181      (answers imok)
           curl -s 127.0.0.1:9404/metrics | grep zkmigrate_proxy`,
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "listen", Value: "127.0.0.1:2181", Usage: "address plaintext clients connect to (empty: none, with --secure-listen)", EnvVars: []string{"ZKM_LISTEN"}},
			&cli.StringFlag{Name: "upstream", Usage: "ZooKeeper servers of the one ensemble, host:port,host:port,... (or --source and --target)", EnvVars: []string{"ZKM_UPSTREAM"}},
			&cli.StringFlag{Name: "source", Usage: "two-ensemble mode: servers of the source ensemble A (migration.yaml's source_zk)", EnvVars: []string{"ZKM_SOURCE"}},
			&cli.StringFlag{Name: "target", Usage: "two-ensemble mode: servers of the target ensemble B (migration.yaml's target_zk)", EnvVars: []string{"ZKM_TARGET"}},
			&cli.StringFlag{Name: "primary", Value: "source", Usage: "two-ensemble mode: the ensemble that serves clients, source or target; the other gets mirrored writes", EnvVars: []string{"ZKM_PRIMARY"}},
			&cli.StringFlag{Name: "admin-addr", Usage: "address of the proxy's admin endpoint (GET /admin/v1/sessions: each client session and its shadow session; POST /admin/v1/flip: the control plane's flip barrier; POST /admin/v1/retire: phase 6 retires the old ensemble), advertised in gossip; empty: off", EnvVars: []string{"ZKM_ADMIN_ADDR"}},
			&cli.DurationFlag{Name: "fence-lease", Value: 5 * time.Second, Usage: "two-ensemble mode: the longest this proxy serves requests from the old primary after a flip it missed (it renews the lease by reading its primary's fence znode every quarter of it); advertised in gossip", EnvVars: []string{"ZKM_FENCE_LEASE"}},
			&cli.StringFlag{Name: "admin-token-file", Usage: "file (mode 600) holding the bearer token the control plane sends with a flip (its --proxy-token-file); without it every flip request is refused (401)", EnvVars: []string{"ZKM_ADMIN_TOKEN_FILE"}},
			&cli.StringFlag{Name: "state-dir", Usage: "two-ensemble mode: directory keeping each session's shadow session, so a restarted proxy resumes it, and whether phase 6 retired the old ensemble (then no session is opened there again)", EnvVars: []string{"ZKM_STATE_DIR"}},
			&cli.IntFlag{Name: "max-mirror-backlog", Value: 100000, Usage: "two-ensemble mode: znode paths waiting for the secondary; beyond, writes are left to the replicator (counted in mirror_failures_total)"},
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
			gossipInsecureFlag(),
			&cli.StringFlag{Name: "name", Usage: "this proxy's name in the gossip pool (default proxy-HOSTNAME) and of its flip hold marker under the fence znode (default proxy-HOSTNAME-LISTEN): unique per proxy, the same across restarts"},
		}, proxyTLSFlags()...),
		Action: runProxy,
	}
}

func parseUpstream(s string) ([]string, error) { return parseHosts("upstream", s) }

func parseHosts(flag, s string) ([]string, error) {
	var out []string
	for _, a := range strings.Split(s, ",") {
		a = strings.TrimSpace(a)
		if a == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(a); err != nil {
			if !strings.Contains(a, ":") {
				return nil, fmt.Errorf("--%s %q: missing port (ZooKeeper's client port is usually 2181: %s:2181)", flag, a, a)
			}
			return nil, fmt.Errorf("--%s %q: %v (want host:port)", flag, a, err)
		}
		out = append(out, a)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("--%s is empty: give the ensemble as host:port,host:port,...", flag)
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

// proxyEnsembles reads --upstream, or --source, --target and --primary:
// the primary's servers, the secondary's (nil in single-ensemble mode) and
// the primary's name.
func proxyEnsembles(c *cli.Context) (primary, secondary []string, name ensemble.Name, err error) {
	up, src, dst := c.String("upstream"), c.String("source"), c.String("target")
	switch {
	case up != "" && (src != "" || dst != ""):
		return nil, nil, "", usageError("--upstream and --source/--target are exclusive: give --upstream for one ensemble, or --source and --target during a migration")
	case up != "":
		if c.IsSet("primary") {
			return nil, nil, "", usageError("--primary needs --source and --target (with --upstream there is one ensemble)")
		}
		primary, err = parseUpstream(up)
		if err != nil {
			return nil, nil, "", usageError("%v", err)
		}
		return primary, nil, ensemble.Source, nil
	case src == "" && dst == "":
		return nil, nil, "", usageError("no ensemble: give --upstream HOSTS, or --source HOSTS and --target HOSTS during a migration")
	case src == "" || dst == "":
		return nil, nil, "", usageError("two-ensemble mode needs both --source and --target (got only one)")
	}
	name, err = ensemble.Parse(c.String("primary"))
	if err != nil {
		return nil, nil, "", usageError("--primary: %v", err)
	}
	hosts := map[ensemble.Name][]string{}
	for _, e := range ensemble.Names {
		if hosts[e], err = parseHosts(e.Flag(), c.String(e.Flag())); err != nil {
			return nil, nil, "", usageError("%v", err)
		}
	}
	for _, a := range hosts[ensemble.Source] {
		for _, b := range hosts[ensemble.Target] {
			if a == b {
				return nil, nil, "", usageError("--source and --target both list %s: they must be two different ensembles", a)
			}
		}
	}
	return hosts[name], hosts[name.Other()], name, nil
}

func runProxy(c *cli.Context) error {
	upstream, secondary, primaryName, err := proxyEnsembles(c)
	if err != nil {
		return err
	}
	if secondary == nil && c.String("state-dir") != "" {
		return usageError("--state-dir keeps shadow sessions: it needs --source and --target")
	}
	if c.Int("max-mirror-backlog") < 1 {
		return usageError("--max-mirror-backlog %d: must be at least 1 (default 100000)", c.Int("max-mirror-backlog"))
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
	token, err := loadFlipToken("admin-token-file", c.String("admin-token-file"))
	if err != nil {
		return err
	}
	tlsc, err := loadProxyTLS(c, log)
	if err != nil {
		return err
	}
	if c.String("listen") == "" && c.String("secure-listen") == "" {
		return usageError("no client port: give --listen, --secure-listen or both")
	}
	var aln net.Listener
	apiURL := ""
	if addr := c.String("admin-addr"); addr != "" {
		aln, err = net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("admin listen on %s: %w (choose another --admin-addr)", addr, err)
		}
		defer aln.Close()
		apiURL = "http://" + aln.Addr().String()
		if tlsc.Admin != nil {
			apiURL = "https://" + aln.Addr().String()
		}
		if secondary != nil && token == "" {
			log.Warn("no --admin-token-file: the flip endpoint refuses every request (401), so the control plane cannot flip this proxy",
				"hint", flipTokenHint)
		}
	} else if secondary != nil && c.String("gossip-addr") != "" {
		log.Warn("no --admin-addr: the control plane cannot reach this proxy for a flip (it is skipped and counted stale)",
			"hint", "pass --admin-addr host:port and --admin-token-file")
	}
	var epoch int64
	var retired ensemble.Name // the ensemble the control plane records as retired (phase 6)
	var agent *membership.Agent
	var name string
	if addr := c.String("gossip-addr"); addr != "" {
		name = c.String("name")
		if name == "" {
			host, _ := os.Hostname()
			name = "proxy-" + host
		}
		key, err := gossipKey(c)
		if err != nil {
			return err
		}
		meta := membership.Meta{Role: membership.RoleProxy, Primary: primaryName, API: apiURL}
		if secondary != nil {
			meta.LeaseMS = c.Duration("fence-lease").Milliseconds()
		}
		agent, err = membership.Join(membership.Config{Name: name, BindAddr: addr, Seeds: c.StringSlice("gossip-join"),
			Meta: meta, SecretKey: key})
		if err != nil {
			return err
		}
		defer agent.Leave()
		if secondary != nil && len(c.StringSlice("gossip-join")) > 0 {
			var rec ensemble.Name
			var recEpoch int64
			var ok bool
			rec, recEpoch, retired, ok = recordedPrimary(agent, 3*time.Second)
			if ok && rec != primaryName {
				log.Warn("the control plane recorded another primary ensemble; it wins over --primary, so a restarted proxy never comes back on the wrong side",
					"flag", primaryName.Flag(), "recorded", rec.Flag(), "epoch", recEpoch)
				upstream, secondary, primaryName = secondary, upstream, rec
			}
			if ok {
				epoch = recEpoch
				_ = agent.SetMeta(func(m *membership.Meta) { m.Primary, m.Epoch = rec, recEpoch })
			}
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// The hold marker is named after the proxy, stable across restarts:
	// its gossip name, else the host and the client address.
	markerName := c.String("name")
	if markerName == "" {
		host, _ := os.Hostname()
		markerName = "proxy-" + host + "-" + c.String("listen") + c.String("secure-listen")
	}
	srv, err := proxy.New(proxy.Config{
		Name:                markerName,
		Retired:             retired,
		Upstream:            upstream,
		Secondary:           secondary,
		PrimaryName:         primaryName,
		Epoch:               epoch,
		FenceLease:          c.Duration("fence-lease"),
		PeerOffsets:         peerOffsets(agent, name, token),
		MaxMirrorBacklog:    c.Int("max-mirror-backlog"),
		StateDir:            c.String("state-dir"),
		MaxFrame:            c.Int("jute-maxbuffer") + jute.DefaultMaxBufferExtra,
		DialTimeout:         c.Duration("dial-timeout"),
		MaxClientBacklog:    c.Int("max-client-backlog"),
		MaxPending:          c.Int("max-pending"),
		MaxCredentials:      c.Int("max-credentials"),
		HandshakeTimeout:    c.Duration("handshake-timeout"),
		MaxConnections:      c.Int("max-connections"),
		MaxConnectionsPerIP: c.Int("max-connections-per-ip"),
		FourLetterWords:     words,
		UpstreamTLS:         tlsc.Upstream,
		PlaintextServers:    tlsc.Plaintext,
		SASLMirrorAuth:      tlsc.Mirror,
		Metrics:             proxy.NewMetrics(reg),
		Logger:              log,
	})
	if err != nil {
		return usageError("%v", err)
	}
	var ln, sln net.Listener
	if addr := c.String("listen"); addr != "" {
		if ln, err = net.Listen("tcp", addr); err != nil {
			return fmt.Errorf("listen on %s: %w (is another ZooKeeper or proxy already there? choose another --listen)", addr, err)
		}
	}
	if addr := c.String("secure-listen"); addr != "" {
		if sln, err = net.Listen("tcp", addr); err != nil {
			if ln != nil {
				ln.Close()
			}
			return fmt.Errorf("listen on %s: %w (choose another --secure-listen)", addr, err)
		}
	}
	var metricsSrv *http.Server
	if addr := c.String("metrics-addr"); addr != "" {
		mln, err := net.Listen("tcp", addr)
		if err != nil {
			for _, l := range []net.Listener{ln, sln} {
				if l != nil {
					l.Close()
				}
			}
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
	errc := make(chan error, 2)
	addrs := []any{}
	if ln != nil {
		go func() { errc <- srv.Serve(ln) }()
		addrs = append(addrs, "addr", ln.Addr().String())
	}
	if sln != nil {
		go func() { errc <- srv.ServeTLS(sln, tlsc.Client) }()
		addrs = append(addrs, "tls_addr", sln.Addr().String(), "tls_mutual", c.String("client-tls-ca") != "")
	}
	addrs = append(addrs, "tls_upstream", tlsc.Upstream != nil)
	if secondary == nil {
		log.Info("proxy listening", append(addrs, "upstream", upstream)...)
	} else {
		log.Info("proxy listening in two-ensemble mode", append(addrs,
			"primary", primaryName.Flag(), primaryName.Flag(), upstream, primaryName.Other().Flag(), secondary)...)
	}
	if aln != nil {
		onFlip := func(epoch int64, primary ensemble.Name) {
			log.Info("flipped by the control plane", "epoch", epoch, "primary", primary.Flag())
			if agent != nil {
				_ = agent.SetMeta(func(m *membership.Meta) { m.Epoch, m.Primary = epoch, primary })
			}
		}
		onRetire := func(retired ensemble.Name) {
			// Advertised by advertiseSessions within 2 s: SetMeta waits for
			// gossip (up to 5 s), which the control plane's request must not.
			log.Info("retired the old ensemble at the control plane's request (phase 6)", "retired", retired.Flag())
		}
		adminSrv := &http.Server{Handler: proxyAdmin(srv, token, onFlip, onRetire), ReadHeaderTimeout: 5 * time.Second, ErrorLog: adminErrorLog(log)}
		if tlsc.Admin != nil {
			adminSrv.TLSConfig = tlsc.Admin
			go func() { _ = adminSrv.ServeTLS(aln, "", "") }()
		} else {
			go func() { _ = adminSrv.Serve(aln) }()
		}
		defer adminSrv.Close()
		log.Info("admin endpoint listening", "addr", aln.Addr().String(), "url", apiURL)
	}
	if agent != nil {
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

// advertiseSessions keeps the proxy's session count, epoch, primary and
// retired ensemble current in the pool.
func advertiseSessions(ctx context.Context, agent *membership.Agent, srv *proxy.Server) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	last := -1
	lastEpoch, lastPrimary := srv.Epoch()
	var lastRetired ensemble.Name
	if r := srv.Retired(); r != "" { // recorded in --state-dir before a restart
		lastRetired = r
		_ = agent.SetMeta(func(m *membership.Meta) { m.Retired = r })
	}
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
		// A proxy that found a missed flip in the fence moved by itself.
		if epoch, primary := srv.Epoch(); epoch != lastEpoch || primary != lastPrimary {
			lastEpoch, lastPrimary = epoch, primary
			_ = agent.SetMeta(func(m *membership.Meta) { m.Epoch, m.Primary = epoch, primary })
		}
		if r := srv.Retired(); r != lastRetired { // phase 6 (POST /admin/v1/retire)
			lastRetired = r
			_ = agent.SetMeta(func(m *membership.Meta) { m.Retired = r })
		}
	}
}

// sessionRow is one line of GET /admin/v1/sessions.
type sessionRow struct {
	Session string `json:"session"`          // the client's session id (hex)
	Shadow  string `json:"shadow,omitempty"` // its shadow session on the secondary
}

// proxyAdmin serves the proxy's admin endpoint: the sessions and the flip
// barrier (token-authenticated).
func proxyAdmin(srv *proxy.Server, token string, onFlip func(int64, ensemble.Name), onRetire func(ensemble.Name)) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("POST "+membership.FlipPath, srv.FlipHandler(token, onFlip))
	mux.Handle("POST "+membership.RetirePath, srv.RetireHandler(token, onRetire))
	mux.Handle("GET "+versionsPath, srv.OffsetsHandler(token))
	mux.HandleFunc("GET /admin/v1/sessions", func(w http.ResponseWriter, _ *http.Request) {
		epoch, primary := srv.Epoch()
		rows := []sessionRow{}
		for _, id := range srv.SessionIDs() {
			r := sessionRow{Session: fmt.Sprintf("0x%x", id)}
			if sid, ok := srv.ShadowSession(id); ok {
				r.Shadow = fmt.Sprintf("0x%x", sid)
			}
			rows = append(rows, r)
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"primary": primary.Flag(), "epoch": epoch, "two_ensembles": srv.TwoEnsembles(),
			"mirror_backlog": srv.MirrorBacklog(), "read_lease_ms": readLeaseMS(srv), "retired": srv.Retired().Flag(), "sessions": rows})
	})
	return mux
}

// readLeaseMS is the bound, advertised, on how long the proxy serves reads
// after a flip it missed (0 in one-ensemble mode: it never flips).
func readLeaseMS(srv *proxy.Server) int64 {
	if !srv.TwoEnsembles() {
		return 0
	}
	return srv.ReadLease().Milliseconds()
}

// recordedPrimary waits up to wait for a control node in the gossip pool
// and returns the primary it advertises (the last completed flip's, with
// its epoch), the highest epoch winning among control nodes. ok is false
// when no control node is seen in time or none advertises a primary: the
// --primary flag stands.
func recordedPrimary(agent *membership.Agent, wait time.Duration) (primary ensemble.Name, epoch int64, retired ensemble.Name, ok bool) {
	deadline := time.Now().Add(wait)
	for {
		var best membership.Meta
		seen := false
		for _, m := range agent.Members() {
			if m.Meta.Role != membership.RoleControl {
				continue
			}
			seen = true
			if m.Meta.Primary.Valid() && (best.Primary == "" || m.Meta.Epoch > best.Epoch) {
				best = m.Meta
			}
		}
		if seen || time.Now().After(deadline) {
			return best.Primary, best.Epoch, best.Retired, best.Primary != ""
		}
		time.Sleep(50 * time.Millisecond)
	}
}
