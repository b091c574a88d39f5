package server

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/zk-migrate/zk-migrate/control"
	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/raftstore"
	"github.com/zk-migrate/zk-migrate/zkclient"
	"github.com/zk-migrate/zk-migrate/zktest"
)

// gathered returns the value of every series of reg as "name{l=v,...}".
func gathered(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			key := f.GetName() + "{" + strings.Join(ls, ",") + "}"
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				out[key] = m.GetCounter().GetValue()
			default:
				out[key] = m.GetGauge().GetValue()
			}
		}
	}
	return out
}

// TestControlMetricsFollowLeadership: a real single-node Raft store holds
// a migration waiting in phase 1 for approval, between a real ensemble A
// (with Mesos masters contending under /mesos) and a B where nothing
// listens. On the leader the metrics show the migration's state, A with
// quorum, B without, and the Mesos leader; the leading master leaving in
// phase 1 counts an unexpected change; and once the node no longer leads,
// the health series vanish (another node checks now) while the replicated
// state's series stay.
func TestControlMetricsFollowLeadership(t *testing.T) {
	if testing.Short() {
		t.Skip("starts ZooKeeper")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a, err := zktest.Start(ctx, zktest.Config{Servers: 1, Name: "metrics-a"})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	c, err := zkclient.Dial(ctx, a.Addrs(), zkclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Create(ctx, "/mesos", nil, zkclient.OpenACL, 0); err != nil {
		t.Fatal(err)
	}
	var masters []string
	for range 2 {
		p, err := c.Create(ctx, "/mesos/json.info_", []byte("{}"), zkclient.OpenACL, jute.FlagEphemeralSequential)
		if err != nil {
			t.Fatal(err)
		}
		masters = append(masters, p)
	}

	raftAddr, err := zktest.StableAddr()
	if err != nil {
		t.Fatal(err)
	}
	node, err := raftstore.Open(raftstore.Config{ID: "solo", Dir: t.TempDir(), BindAddr: raftAddr, Bootstrap: true,
		HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond, LeaderLeaseTimeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	if err := node.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	var cfg control.Config
	cfg.Migration.ID = "m1"
	cfg.Migration.SourceZK, cfg.Migration.TargetZK = a.ConnectString(), "127.0.0.1:1" // nothing listens on B
	cfg.Migration.Paths = []string{"/mesos"}
	cfg.Migration.RequireManualApproval = true
	cfg.Migration.HealthCheckIntervalSec = 1
	raw, _ := json.Marshal(&cfg)
	now := time.Now().UTC()
	for _, cmd := range []control.Command{
		{Kind: control.CmdCreate, Migration: "m1", By: "t", Time: now, Config: &control.MigrationConfig{SourceZK: cfg.Migration.SourceZK,
			TargetZK: cfg.Migration.TargetZK, Paths: cfg.Migration.Paths, RequireApproval: true, Raw: raw}},
		{Kind: control.CmdStart, Migration: "m1", By: "t", Time: now},
	} {
		if err := node.Apply(ctx, cmd); err != nil {
			t.Fatal(err)
		}
	}

	var leads atomic.Bool
	leads.Store(true)
	sy := &Syncer{IsLeader: func() bool { return leads.Load() && node.IsLeader() }, NodeID: "solo",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Apply: node.Apply, State: node.State, Barrier: node.Barrier,
		Current: func(id string) *control.Migration { return node.State().Migrations[id] }, SuperviseEvery: 100 * time.Millisecond}
	reg := prometheus.NewRegistry()
	sy.Metrics = NewMetrics(reg, node, sy)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); sy.Supervise(ctx) }()
	defer wg.Wait()
	defer cancel()

	const (
		quorumA  = `zkmigrate_control_ensemble_quorum{migration=m1,side=A}`
		quorumB  = `zkmigrate_control_ensemble_quorum{migration=m1,side=B}`
		leader   = `zkmigrate_control_mesos_leader_sequence{migration=m1,path=/mesos}`
		changes  = `zkmigrate_control_mesos_unexpected_leader_changes_total{migration=m1,path=/mesos}`
		awaiting = `zkmigrate_control_migration_awaiting_approval{migration=m1}`
		status   = `zkmigrate_control_migration_status{migration=m1,status=awaiting-approval,step=1-deploy-b-and-sync}`
	)
	seq := func(p string) float64 {
		var n float64
		for _, ch := range p[strings.LastIndex(p, "_")+1:] {
			n = n*10 + float64(ch-'0')
		}
		return n
	}
	wait := func(what string, ok func(map[string]float64) bool) map[string]float64 {
		t.Helper()
		var got map[string]float64
		for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if got = gathered(t, reg); ok(got) {
				return got
			}
		}
		t.Fatalf("%s: not within 15 s; metrics:\n%v", what, got)
		return nil
	}
	got := wait("health of A and B and the Mesos leader on the leader", func(g map[string]float64) bool {
		_, hasB := g[quorumB]
		l, hasLeader := g[leader] // present: the first master's sequence may be 0
		return g[quorumA] == 1 && hasB && hasLeader && l == seq(masters[0])
	})
	for key, want := range map[string]float64{quorumB: 0, awaiting: 1, status: 1, changes: 0,
		`zkmigrate_control_migration_phase{migration=m1}`: 1, `zkmigrate_control_ensemble_servers_serving{migration=m1,side=B}`: 0,
		`zkmigrate_control_raft_is_leader{}`: 1, `zkmigrate_control_raft_voters{}`: 1, `zkmigrate_control_migration_sync_running{migration=m1}`: 0,
		`zkmigrate_control_migration_flip_barrier_open{migration=m1}`: 0, `zkmigrate_control_migrations{}`: 1} {
		if v, ok := got[key]; !ok || v != want {
			t.Errorf("%s = %v (exported %v), want %v", key, v, ok, want)
		}
	}

	if err := c.Delete(ctx, masters[0], -1); err != nil { // the leading master leaves in phase 1
		t.Fatal(err)
	}
	wait("the unexpected Mesos leader change counted", func(g map[string]float64) bool {
		return g[changes] == 1 && g[leader] == seq(masters[1])
	})

	leads.Store(false) // leadership moves away: the health checks stop here
	wait("the health series gone from a node that no longer leads", func(g map[string]float64) bool {
		_, q := g[quorumA]
		_, l := g[leader]
		return !q && !l && g[awaiting] == 1
	})
}
