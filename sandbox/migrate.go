package sandbox

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zk-migrate/zk-migrate/deployer"
	"github.com/zk-migrate/zk-migrate/zktest"
)

// MigrationConfig sizes the migration demo (`zk-migrate demo`, `make
// demo`).
type MigrationConfig struct {
	// ZkMigrate is the zk-migrate binary (proxies and control nodes run
	// as its subcommands); MesosSim the Mesos emulator, bin/mesos-sim.
	ZkMigrate, MesosSim string
	// Dir keeps every process's log, the control nodes' data and
	// migration.yaml (default: a new directory under the temp dir, kept).
	Dir string
	// Agents per side (default 3), Tasks the framework keeps running
	// (default 10), Proxies in front of the Mesos processes (default 3).
	Agents, Tasks, Proxies int
	// Chaos names the faults injected at each moment of ChaosAt
	// (chaos.go): FaultZooKeeper (the ZooKeeper leader of A and of B
	// SIGKILLed and restarted), FaultControlLeader (the control-plane
	// leader SIGKILLed and restarted from its data directory), FaultProxy
	// (the framework host's proxy SIGKILLed and restarted),
	// FaultPartition (that proxy cut from B for 4 s), FaultDelay (every
	// proxy's traffic with B delayed by 50 ms each way from then on).
	Chaos []string
	// ChaosAt names the moments the faults are injected at, each fault
	// once at each (ChaosMoments: "flip", "2" to "5", "rollback"; default
	// phase 2 alone).
	ChaosAt []string
	// RollbackAt, if 2 to 5, rolls the migration back to phase 1 (primary
	// A, Mesos on A) once that phase has succeeded, instead of going on.
	RollbackAt int
	// SessionTimeout is the Mesos processes' --zk_session_timeout
	// (default 10 s, Mesos' own).
	SessionTimeout time.Duration
}

const demoID = "demo"

// Migrate runs the whole migration of an emulated Mesos cluster from
// ensemble A to ensemble B through the control plane, printing progress to
// out, and returns the report of what it measured (also printed). err is
// for a demo that could not run; a migration that ran and broke a
// guarantee returns a report whose OK is false.
func Migrate(ctx context.Context, cfg MigrationConfig, out io.Writer) (rep MigrationReport, err error) {
	out = &lockedWriter{w: out}
	if cfg.Agents == 0 {
		cfg.Agents = 3
	}
	if cfg.Tasks == 0 {
		cfg.Tasks = 10
	}
	if cfg.Proxies == 0 {
		cfg.Proxies = 3
	}
	if cfg.SessionTimeout == 0 {
		cfg.SessionTimeout = 10 * time.Second
	}
	for _, f := range cfg.Chaos {
		if !slices.Contains(Faults, f) {
			return rep, fmt.Errorf("sandbox: chaos fault %q: want one of %v", f, Faults)
		}
	}
	if cfg.RollbackAt != 0 && (cfg.RollbackAt < 2 || cfg.RollbackAt > 5) {
		return rep, fmt.Errorf("sandbox: rollback at phase %d: give 2 to 5 (phases that move Mesos processes)", cfg.RollbackAt)
	}
	if len(cfg.ChaosAt) == 0 {
		cfg.ChaosAt = []string{"2"}
	}
	if err := CheckChaosAt(cfg.ChaosAt, cfg.RollbackAt); err != nil {
		return rep, fmt.Errorf("sandbox: %w", err)
	}
	for _, b := range []string{cfg.ZkMigrate, cfg.MesosSim} {
		if _, err := os.Stat(b); err != nil {
			return rep, fmt.Errorf("sandbox: %w (run make build)", err)
		}
	}
	if cfg.Dir == "" {
		if cfg.Dir, err = os.MkdirTemp("", "zkm-demo-"); err != nil {
			return rep, fmt.Errorf("sandbox: %w", err)
		}
	}
	d := &demo{cfg: cfg, out: out, start: time.Now(), ps: &procs{dir: cfg.Dir}}
	d.step.Store("")
	defer d.cleanup()
	rep, err = d.run(ctx)
	rep.Dir = cfg.Dir
	if err == nil {
		printMigrationReport(out, rep)
	}
	return rep, err
}

// demo is one run of Migrate: what it started, in the order to stop it.
type demo struct {
	cfg   MigrationConfig
	out   io.Writer
	start time.Time
	ps    *procs

	a, b      *zktest.Ensemble
	dep       *deployer.Local
	sides     [2]struct{ masters, agents []deployer.Process }
	proxies   []string          // client addresses of the masters' and agents' proxies
	fwProxy   *proxyProc        // the framework's host's proxy (the framework and the probe)
	hops      map[string][]*hop // by proxy name: its way to each server of B
	proxyLogs []string          // their names (NAME.log)
	metrics   []string          // their /metrics addresses
	admins    []string          // their admin endpoints (host:port)
	api       *controlAPI
	fwURL     string
	step      atomic.Value // string: the step being run, for leaderWatch
	cleanups  []func()

	gossipJoin, proxyToken, gossipKey string
	ctl                               []*ctlNode
	mirrorAtSync                      *mirrorHist          // the proxies' mirror delays when phase 1 succeeded
	faults                            sync.WaitGroup       // chaos goroutines, waited for by cleanup
	faultLog                          []string             // what chaos did, for the report
	faultOn                           map[string]bool      // faults under way (chaos.go)
	killedMetrics                     []map[string]float64 // SIGKILLed proxies' last metrics (mirrorStats)
	faultMu                           sync.Mutex
}

func (d *demo) say(format string, args ...any) {
	fmt.Fprintf(d.out, "[%6.1fs] %s\n", time.Since(d.start).Seconds(), fmt.Sprintf(format, args...))
}

func (d *demo) cleanup() {
	d.faults.Wait()
	for i := len(d.cleanups) - 1; i >= 0; i-- {
		d.cleanups[i]()
	}
}

func (d *demo) run(ctx context.Context) (MigrationReport, error) {
	var rep MigrationReport
	if err := d.startEnsembles(ctx); err != nil {
		return rep, err
	}
	if err := d.startControlPlane(ctx); err != nil {
		return rep, err
	}
	if err := d.startProxies(ctx); err != nil {
		return rep, err
	}
	if err := d.startMesos(ctx); err != nil {
		return rep, err
	}

	obsCtx, stopObs := context.WithCancel(ctx)
	var obs sync.WaitGroup
	defer func() { stopObs(); obs.Wait() }()
	lw := &leaderWatch{masters: append(append([]deployer.Process{}, d.sides[0].masters...), d.sides[1].masters...), dep: d.dep, step: &d.step}
	lags := &lagSampler{}
	pr, err := startProbe(ctx, d.fwProxy.listen, "/demo/probe")
	if err != nil {
		return rep, err
	}
	defer pr.conn.Close()
	dw, err := startDirectWriter(ctx, d.a.Addrs(), "/demo/direct")
	if err != nil {
		return rep, err
	}
	defer dw.conn.Close()
	probeCtx, stopProbe := context.WithCancel(obsCtx)
	defer stopProbe()
	obs.Add(3)
	probeDone, directDone := make(chan struct{}), make(chan struct{})
	go func() { defer close(directDone); dw.run(probeCtx) }()
	defer func() { stopProbe(); <-directDone }()
	go func() { defer obs.Done(); lw.run(obsCtx) }()
	go func() { defer obs.Done(); lags.run(obsCtx, d.api, demoID) }()
	go func() { defer close(probeDone); pr.run(probeCtx) }()
	defer func() { stopProbe(); <-probeDone }()
	// The register workload: one client per proxy, its history checked
	// with porcupine at the end.
	regReady, regDone := make(chan error, 1), make(chan *register, 1)
	go func() {
		regDone <- runRegister(probeCtx, append(append([]string{}, d.proxies...), d.fwProxy.listen), slices.Clone(d.proxyLogs), "/demo/register", regReady)
	}()
	if err := <-regReady; err != nil {
		stopProbe()
		<-regDone
		return rep, err
	}
	go func() { defer obs.Done(); d.progress(obsCtx, lw) }()
	if err := waitUntil(ctx, 20*time.Second, "a leading master", func() bool { return lw.leader() != "" }); err != nil {
		return rep, err
	}
	d.say("Mesos on A: leader %s, %d agents, %d tasks; a client writes /demo/probe through %s", lw.leader(), d.cfg.Agents, d.cfg.Tasks, d.fwProxy.listen)
	d.say("a client bypassing the proxies creates %s/w-NNNNNN on A's servers every %v", dw.dir, directEvery)

	if err := d.migrate(ctx); err != nil {
		return rep, err
	}

	// The checks of the end, then the figures.
	stopProbe()
	<-probeDone // its last write answered: what it acknowledged is final
	<-directDone
	reg := <-regDone
	rep.RolledBack = d.cfg.RollbackAt != 0
	if err := pr.check(); err != nil {
		rep.LostWrites = 1
		rep.Errors = append(rep.Errors, err.Error())
	}
	if d.cfg.RollbackAt == 0 {
		// Before phase 6 retires A: B and A equal while A still exists.
		d.say("comparing ensembles A and B by digest (sync and mirror still running)")
	} else {
		d.say("comparing ensembles A and B by digest after the rollback")
	}
	rep.DigestsEqual, rep.DigestDiffs = awaitEqual(ctx, d.a, d.b, []string{"/mesos", "/demo"}, d.out, 30*time.Second)
	d.checkDirect(ctx, &rep, dw)
	// A client of A that phase 6 must not find: it stopped writing with
	// the probe, its writes are checked.
	dw.conn.Close()
	if d.cfg.RollbackAt == 0 {
		// Phase 6: the sync stops, every proxy retires A (its shadow
		// sessions there closed), no client session is left on A. The
		// Mesos processes keep running through it (their sessions are
		// counted with the others).
		var err error
		if rep.Retired, err = d.phase6(ctx); err != nil {
			return rep, err
		}
	}
	stopObs()
	obs.Wait()
	d.collect(ctx, &rep, lw, lags, pr)
	d.checkRegister(&rep, reg)
	return rep, nil
}

// checkDirect counts the direct writer's acknowledged writes missing on
// A or on B (after the digests met: the sync has copied what it will).
func (d *demo) checkDirect(ctx context.Context, rep *MigrationReport, dw *directWriter) {
	dw.mu.Lock()
	rep.DirectWrites, rep.DirectErrors = len(dw.acked), dw.errs
	if dw.firstErr != nil {
		rep.Errors = append(rep.Errors, dw.firstErr.Error())
	}
	dw.mu.Unlock()
	rep.DirectConnLoss = dw.connLoss.Load()
	for _, e := range []struct {
		name  string
		addrs []string
	}{{"A", d.a.Addrs()}, {"B", d.b.Addrs()}} {
		miss, err := dw.missing(ctx, e.addrs)
		if err != nil {
			rep.Errors = append(rep.Errors, fmt.Sprintf("direct writer: check %s: %v", e.name, err))
			continue
		}
		for _, p := range miss {
			rep.DirectMissing = append(rep.DirectMissing, p+" on "+e.name)
		}
	}
}

// checkRegister judges the register workload's history into rep: its
// figures, the anomalies in its own terms, porcupine's verdict (OK needs
// Ok); the history is saved as register.jsonl in the run's directory,
// and an Illegal one drawn as register.html.
func (d *demo) checkRegister(rep *MigrationReport, reg *register) {
	reg.mu.Lock()
	rep.RegisterOps, rep.RegisterUnknown = len(reg.ops), reg.unsure
	rep.RegisterErrors = reg.errs
	reg.mu.Unlock()
	rep.RegisterStart = reg.start.Sub(d.start)
	rep.RegisterDups, rep.RegisterSkipped, rep.RegisterAnomalies = reg.versionGaps(rep.RegisterStart)
	d.say("checking the register history (%d writes from %d clients) for linearizability (porcupine)", rep.RegisterOps, len(reg.names))
	if err := reg.save(filepath.Join(d.cfg.Dir, "register.jsonl")); err != nil {
		rep.Errors = append(rep.Errors, err.Error())
	}
	t0 := time.Now()
	res, err := reg.check(2*time.Minute, filepath.Join(d.cfg.Dir, "register.html"))
	rep.Linearizable, rep.LinearizeTook = string(res), time.Since(t0)
	if err != nil {
		rep.Errors = append(rep.Errors, err.Error())
	}
}
