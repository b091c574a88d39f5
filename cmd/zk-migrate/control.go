package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os/signal"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/zk-migrate/zk-migrate/alert"

	"github.com/zk-migrate/zk-migrate/control"
	"github.com/zk-migrate/zk-migrate/control/server"
	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/membership"
	"github.com/zk-migrate/zk-migrate/raftstore"
)

func controlCommand() *cli.Command {
	return &cli.Command{
		Name:  "control",
		Usage: "run a control-plane node (Raft-replicated migration state, REST API, phase executor)",
		Description: `Runs one control-plane node. One node is enough for the sandbox; run 3 or 5
in production so the migration survives the loss of any of them.

A node restarts (after a crash, a reboot, an upgrade) with the same --id,
--raft-addr and --data-dir and neither --bootstrap nor --join: it starts
from the Raft state in --data-dir and catches up with the leader.

First node:   zk-migrate control --id c1 --raft-addr 10.0.0.1:7000 --api-addr 10.0.0.1:8080 \
                  --data-dir /var/lib/zk-migrate --tokens /etc/zk-migrate/tokens --bootstrap
Other nodes:  zk-migrate control --id c2 --raft-addr 10.0.0.2:7000 --api-addr 10.0.0.2:8080 \
                  --data-dir /var/lib/zk-migrate --tokens /etc/zk-migrate/tokens --join http://10.0.0.1:8080

A joining node is a non-voter until it has caught up with the leader and
stayed caught up for --raft-stabilization; a join to a Raft address where
nothing listens is refused. Remove a dead node with
zk-migrate node remove --id ID --confirm. Give every node, proxy and
replicator the same --gossip-key-file to encrypt and authenticate gossip.

The tokens file has one "TOKEN ROLE NAME" per line, ROLE viewer or operator;
the same file on every node. Every change is attributed to the token's NAME
in the audit trail. The leader runs the phases: phase 1 starts the
replicator (sync A <-> B) and waits for equal digests; phases 2-6 run the
shell commands of migration.yaml's actions; the flip runs the epoch barrier.

TLS (TLS 1.2+, certificates reloaded when the files change): --tls-cert and
--tls-key serve the API over HTTPS (--join https://...), --tls-client-ca
requires client certificates, --tls-ca verifies the other nodes' APIs;
--raft-tls-cert, --raft-tls-key and --raft-tls-ca make Raft mutual TLS, and
only certificates carrying --raft-tls-peer-name (default zk-migrate-raft)
with the serverAuth and clientAuth usages may speak Raft. The
audit trail is hash-chained (zk-migrate audit verify); --audit-retention
prunes it.`,
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "id", Required: true, Usage: "this node's id (c1, c2...)"},
			&cli.StringFlag{Name: "raft-addr", Required: true, Usage: "Raft address, host:port, reachable by the other nodes"},
			&cli.StringFlag{Name: "api-addr", Value: "127.0.0.1:8080", Usage: "REST API address"},
			&cli.StringFlag{Name: "api-url", Usage: "URL other nodes use for this node's API (default http://API-ADDR)"},
			&cli.StringFlag{Name: "data-dir", Required: true, Usage: "where the Raft log and snapshots live"},
			&cli.StringFlag{Name: "tokens", Required: true, Usage: "API tokens file (TOKEN ROLE NAME per line)"},
			&cli.BoolFlag{Name: "bootstrap", Usage: "start a new cluster with this node (first node only)"},
			&cli.StringFlag{Name: "join", Usage: "API URL of a running node to join"},
			&cli.DurationFlag{Name: "raft-stabilization", Value: 10 * time.Second,
				Usage: "how long a joined node must stay caught up with the leader before it becomes a voter"},
			&cli.StringFlag{Name: "gossip-addr", Usage: "join the gossip pool on host:port (proxies found there take part in flips)"},
			&cli.StringSliceFlag{Name: "gossip-join", Usage: "gossip members to join, host:port (repeatable)"},
			gossipKeyFlag(),
			gossipInsecureFlag(),
			&cli.StringFlag{Name: "proxy-token-file", EnvVars: []string{"ZKM_PROXY_TOKEN_FILE"},
				Usage: "file (mode 600) holding the bearer token sent with every flip request to the proxies (their --admin-token-file)"},
			&cli.StringFlag{Name: "proxy-tls-ca", EnvVars: []string{"ZKM_PROXY_TLS_CA"},
				Usage: "CA that signed the proxies' admin certificates (their --admin-tls-cert): flip requests go to https:// admin endpoints verified with it"},
			&cli.StringFlag{Name: "proxy-tls-cert", EnvVars: []string{"ZKM_PROXY_TLS_CERT"},
				Usage: "client certificate (PEM) presented to the proxies' admin endpoints (their --admin-tls-client-ca)"},
			&cli.StringFlag{Name: "proxy-tls-key", EnvVars: []string{"ZKM_PROXY_TLS_KEY"}, Usage: "the key of --proxy-tls-cert"},
			&cli.StringFlag{Name: "metrics-addr", Usage: "address of the Prometheus /metrics endpoint, plain HTTP without a token, e.g. 127.0.0.1:9406 (empty: off)"},
			&cli.DurationFlag{Name: "audit-retention", Value: server.DefaultAuditRetention,
				Usage: "drop audit entries older than this (the leader prunes hourly; the chain stays verifiable from an anchor); 0 keeps every entry"},
		}, controlTLSFlags()...),
		Action: runControl,
	}
}

func runControl(c *cli.Context) error {
	restart, err := startMode(c)
	if err != nil {
		return err
	}
	if c.Duration("audit-retention") < 0 {
		return usageError("--audit-retention %s: want a positive duration, or 0 to keep every entry", c.Duration("audit-retention"))
	}
	tokens, err := server.LoadTokens(c.String("tokens"))
	if err != nil {
		return usageError("%v", err)
	}
	var gkey []byte
	if c.String("gossip-addr") != "" {
		if gkey, err = gossipKey(c); err != nil {
			return err
		}
	}
	var joinToken string
	for tok, id := range tokens {
		if id.Role == server.RoleOperator {
			joinToken = tok
			break
		}
	}
	if joinToken == "" {
		return usageError("--tokens: no operator token (nodes join with one)")
	}
	log, _ := newLogger("info")
	tlsc, err := loadControlTLS(c, log)
	if err != nil {
		return err
	}
	node, err := raftstore.Open(raftstore.Config{ID: c.String("id"), Dir: filepath.Clean(c.String("data-dir")),
		BindAddr: c.String("raft-addr"), Bootstrap: c.Bool("bootstrap"), Logger: log, TLS: tlsc.Raft})
	if err != nil {
		return err
	}
	defer node.Close()
	apiURL := c.String("api-url")
	if apiURL == "" {
		apiURL = "http://" + c.String("api-addr")
		if tlsc.API != nil {
			apiURL = "https://" + c.String("api-addr")
		}
	}
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	hub := &server.AlertHub{Ctx: ctx, Logger: log}
	sy := &server.Syncer{IsLeader: node.IsLeader, Logger: log, Alerts: hub.For, NodeID: c.String("id"),
		Apply: node.Apply, State: node.State, Barrier: node.Barrier,
		Current: func(id string) *control.Migration { return node.State().Migrations[id] },
		Record: func(m *control.Migration, event, detail string) {
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			_ = node.Apply(rctx, control.Command{Kind: control.CmdRecord, Migration: m.ID, Event: event, Detail: detail,
				By: "replicator:" + c.String("id"), Time: time.Now().UTC()})
		}}
	srv := &server.Server{Node: node, Tokens: tokens, Logger: log, SyncStatus: sy.Status,
		Health: func(string) any { return sy.Status() }, SyncProblem: sy.Problem,
		FlipCheck: func(ctx context.Context, m *control.Migration) error { return sy.FlipReady(ctx, m, "A", "B") },
		Transport: tlsc.Peer}
	// The dashboard's proxies come from the gossip pool, which is joined
	// after the API serves (a joining node needs its API first).
	var gossipAgent atomic.Pointer[membership.Agent]
	if c.String("gossip-addr") != "" {
		srv.Members = func() []membership.Member {
			if a := gossipAgent.Load(); a != nil {
				return a.Members()
			}
			return nil
		}
	}
	ln, err := net.Listen("tcp", c.String("api-addr"))
	if err != nil {
		return fmt.Errorf("api listen on %s: %w", c.String("api-addr"), err)
	}
	hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 5 * time.Second, ErrorLog: httpErrorLog(log)}
	if tlsc.API != nil {
		hs.TLSConfig = tlsc.API.ServerConfig(tlsc.ClientAuth)
		go func() { _ = hs.ServeTLS(ln, "", "") }()
	} else {
		go func() { _ = hs.Serve(ln) }()
	}
	defer hs.Close()

	// Autopilot promotes joined nodes once they have caught up (on the
	// leader); it stops before the node closes.
	ap := &raftstore.Autopilot{Node: node, Stats: server.StatsOverAPI(node.State, joinToken, tlsc.Peer),
		StabilizationTime: c.Duration("raft-stabilization"), Logger: log}
	apDone := make(chan struct{})
	go func() { defer close(apDone); _ = ap.Run(ctx) }()
	defer func() { stop(); <-apDone }()
	pruner := &server.AuditPruner{Apply: node.Apply, State: node.State, IsLeader: node.IsLeader, NodeID: c.String("id"),
		Retention: c.Duration("audit-retention"), Logger: log}
	prDone := make(chan struct{})
	go func() { defer close(prDone); pruner.Run(ctx) }()
	defer func() { stop(); <-prDone }()

	switch {
	case restart:
		log.Info("restarting from the Raft state in --data-dir", "dir", c.String("data-dir"))
		if err := announceRestart(ctx, &http.Client{Transport: tlsc.Peer, Timeout: 30 * time.Second}, node, c.String("id"), apiURL, joinToken); err != nil {
			return err
		}
	case c.Bool("bootstrap"):
		if err := announceSelf(ctx, node, c.String("id"), apiURL); err != nil {
			return err
		}
	default:
		if err := joinCluster(ctx, &http.Client{Transport: tlsc.Peer, Timeout: 30 * time.Second}, c.String("join"), joinToken, c.String("id"), node.Addr(), apiURL); err != nil {
			return err
		}
	}
	var fleet control.ProxyFleet = server.NoProxies{}
	var _ control.Retirer = (*membership.Fleet)(nil) // phase 6 asks the proxies to retire A (control/executor_retire.go)
	if addr := c.String("gossip-addr"); addr != "" {
		agent, err := membership.Join(membership.Config{Name: "control-" + c.String("id"), BindAddr: addr, SecretKey: gkey,
			Seeds: c.StringSlice("gossip-join"), Meta: membership.Meta{Role: membership.RoleControl, API: apiURL}})
		if err != nil {
			return err
		}
		defer agent.Leave()
		adDone := make(chan struct{})
		go func() { defer close(adDone); advertisePrimary(ctx, agent, node.State) }()
		defer func() { stop(); <-adDone }()
		ptok, err := loadFlipToken("proxy-token-file", c.String("proxy-token-file"))
		if err != nil {
			return err
		}
		pclient, err := proxyFleetClient(c, log)
		if err != nil {
			return err
		}
		mf := &membership.Fleet{Agent: agent, Token: ptok, Client: pclient}
		fleet = mf
		gossipAgent.Store(agent)
		srv.Health = func(id string) any {
			detail := map[string]any{"sync": sy.Status()}
			if m := node.State().Migrations[id]; m != nil {
				detail["stale_proxies"] = mf.Stale(m.Epoch)
				if m.ARetired {
					detail["proxies_not_retired_a"] = mf.NotRetired(ensemble.Source) // phase 6 asked them (gossip)
				}
			}
			live, _ := mf.Live(ctx)
			detail["live_proxies"] = live
			return detail
		}
	}
	if err := serveControlMetrics(ctx, c.String("metrics-addr"), node, sy, fleet, log); err != nil {
		return err
	}
	log.Info("control node running", "id", c.String("id"), "raft", node.Addr(), "api", apiURL)
	// The replicator follows leadership: the supervisor starts it on the
	// leader from the replicated state and stops it elsewhere.
	sctx, scancel := context.WithCancel(ctx)
	supervised := make(chan struct{})
	go func() { defer close(supervised); sy.Supervise(sctx) }()
	defer func() { scancel(); <-supervised }()
	ex := &control.Executor{P: node, Steps: server.Steps(sy), Fleet: fleet, Logger: log, Name: c.String("id"), Guard: sy, Fencer: sy,
		OnFail: func(m *control.Migration, err error) {
			hub.For(m).Notify(alert.Alert{Kind: "phase_failed", Severity: alert.Critical, Migration: m.ID,
				Summary: fmt.Sprintf("%s failed", m.Step), Detail: err.Error(), DedupKey: fmt.Sprintf("phase_failed/%s/%s", m.ID, m.Step)})
		}}
	_ = ex.Run(ctx)
	return nil
}

// announceSelf records the bootstrap node's API address once it leads.
func announceSelf(ctx context.Context, node *raftstore.Node, id, api string) error {
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for !node.IsLeader() {
		if node.State().Nodes[id] == api {
			return nil // restarted member of an existing cluster
		}
		select {
		case <-wctx.Done():
			return nil // another node leads; it already knows us or we joined before
		case <-time.After(50 * time.Millisecond):
		}
	}
	if node.State().Nodes[id] == api {
		return nil
	}
	return node.Apply(ctx, control.Command{Kind: control.CmdNodeJoin, Node: id, API: api, By: "node:" + id, Time: time.Now().UTC()})
}

// joinCluster asks a running node (forwarded to the leader) to add us.
func joinCluster(ctx context.Context, client *http.Client, url, token, id, raftAddr, api string) error {
	body, _ := json.Marshal(map[string]string{"id": id, "raft_addr": raftAddr, "api": api})
	var last error
	for i := 0; i < 60; i++ {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url+"/api/v1/cluster/join", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := client.Do(req)
		if err == nil {
			var final bool
			if final, err = joinResult(resp); err == nil || final {
				return err
			}
		}
		last = err
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	return fmt.Errorf("could not join the cluster at %s: %w", url, last)
}

// advertisePrimary keeps this node's gossip metadata on the primary the
// replicated state records (the last completed flip's ensemble and the
// epoch of the migration with the highest one), so a proxy that starts or
// restarts joins on the right side whatever its --primary flag says. It
// returns when ctx ends.
func advertisePrimary(ctx context.Context, agent *membership.Agent, state func() *control.State) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var last membership.Meta
	for {
		st := state()
		primary, epoch := recordedPrimaryOf(st)
		retired := retiredOf(st, epoch)
		if primary != last.Primary || epoch != last.Epoch || retired != last.Retired {
			if err := agent.SetMeta(func(m *membership.Meta) { m.Primary, m.Epoch, m.Retired = primary, epoch, retired }); err == nil {
				last.Primary, last.Epoch, last.Retired = primary, epoch, retired
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// retiredOf is ensemble A when the migration with the highest flip epoch
// (epoch) has had its proxies asked to retire A (phase 6), else "": a
// proxy that starts without its --state-dir record then opens no shadow
// session on A.
func retiredOf(st *control.State, epoch int64) ensemble.Name {
	for _, m := range st.Migrations {
		if servingEpoch(m) == epoch && m.ARetired {
			return ensemble.Source
		}
	}
	return ""
}

// recordedPrimaryOf is the primary of the migration with the highest flip
// epoch ("" before any migration exists), with the epoch it serves under.
//
// While a forward flip's barrier is open the migration is already at the
// flip's epoch E but its primary is still the old one until the flip is
// done: the pair (E, old primary) is no state any proxy is ever in, and a
// proxy that started with it took E as its own, so the barrier's raised
// fence (E, new primary) did not look like a flip it missed and it served
// the old primary beside its peers on the new one (the chaos demo, a proxy
// restarted while the control leader was dead). So the epoch advertised
// with the old primary is E-1: a proxy starting then is at an epoch below
// the barrier's, holds itself while the barrier is announced, and
// follows the raised fence as a flip it missed.
func recordedPrimaryOf(st *control.State) (ensemble.Name, int64) {
	var primary ensemble.Name
	var epoch int64 = -1
	for _, m := range st.Migrations {
		name, err := ensemble.Parse(string(m.Primary))
		if err != nil {
			continue
		}
		if e := servingEpoch(m); e > epoch {
			primary, epoch = name, e
		}
	}
	if epoch < 0 {
		return "", 0
	}
	return primary, epoch
}

// servingEpoch is the epoch m's recorded primary serves under: m.Epoch,
// less one while a forward flip to that epoch is not done yet (see
// recordedPrimaryOf).
func servingEpoch(m *control.Migration) int64 {
	if f := m.Flip; f != nil && !f.Done && f.Epoch == m.Epoch && m.Epoch > 0 {
		return m.Epoch - 1
	}
	return m.Epoch
}
