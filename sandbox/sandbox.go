// Package sandbox runs zk-migrate's local demonstration: a real ZooKeeper
// ensemble on loopback, one sidecar proxy per emulated Mesos host, and live
// Mesos-shaped load through the proxies while ZooKeeper servers are killed
// and restarted under it. It reports what a Mesos operator would care about:
// sessions expired (must be 0), leader changes (must be 0), acknowledged
// writes lost (must be 0).
//
// Usage:
//
//	rep, err := sandbox.Run(ctx, sandbox.Config{Duration: 30 * time.Second}, os.Stdout)
//	if err == nil && rep.OK() { ... }
//
// The load is Mesos-shaped but comes from go-zookeeper clients, not from
// Mesos: masters contend with ephemeral sequential json.info_ nodes (lowest
// sequence leads), agents watch the children and follow the lowest, and
// writers update counters and remember every acknowledged value.
package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/proxy"
	"github.com/zk-migrate/zk-migrate/proxy/proxytest"
	"github.com/zk-migrate/zk-migrate/replicator"
	"github.com/zk-migrate/zk-migrate/zkclient"
	"github.com/zk-migrate/zk-migrate/zktest"
)

// Config sizes the sandbox.
type Config struct {
	// Duration of the load (default 30 s). Faults are spread across it.
	Duration time.Duration
	// Hosts is the number of emulated Mesos hosts, each with its own proxy,
	// one contending master and Agents agents (default 3).
	Hosts  int
	Agents int // per host (default 3)
	// Kills is how many times a ZooKeeper server is killed and restarted
	// (default 2; 0 disables faults).
	Kills int
	// Logger receives the proxies' logs (default: discarded).
	Logger *slog.Logger
	// NoSync leaves out ensemble B and the replicator (phase 1: B kept an
	// exact copy of A, in both directions, while A serves the load).
	NoSync bool
}

// Report is the outcome of a sandbox run.
type Report struct {
	Sessions         int
	Reads, Writes    int64
	ConnectionLosses int64 // requests in flight when a server died; retried
	OtherErrors      int64
	Expired          int64 // sessions the clients saw expire: must be 0
	Disconnects      int64 // clients that reconnected (a write was in flight on a killed server)
	LeaderChanges    int64 // leader as seen by agents changed: must be 0
	LostWrites       int   // acknowledged writes not found at the end: must be 0
	ServerKills      int
	Reattaches       float64
	Elapsed          time.Duration
	// Sync: B's digest equal to A's at the end, and the replication lag.
	SyncChecked     bool
	SyncEqual       bool
	SyncDifferences []string
	SyncSettle      time.Duration // after the load: until B matched A
	LagP50, LagP99  time.Duration
	Errors          []error // the first unexpected errors, if any
}

// OK reports whether the run met the guarantees.
func (r Report) OK() bool {
	return r.Expired == 0 && r.LeaderChanges == 0 && r.LostWrites == 0 && r.OtherErrors == 0 && r.Writes > 0 &&
		(!r.SyncChecked || r.SyncEqual)
}

type counters struct {
	reads, writes, connLoss, other, expired, disconnects, leaderChanges atomic.Int64
	errMu                                                               sync.Mutex
	errs                                                                []error
}

// noteErr keeps the first few unexpected errors for the report.
func (c *counters) noteErr(err error) {
	c.errMu.Lock()
	defer c.errMu.Unlock()
	if len(c.errs) < 5 {
		c.errs = append(c.errs, err)
	}
}

// Run starts everything, drives the load and the faults, prints progress to
// out every second, tears everything down and returns the report.
func Run(ctx context.Context, cfg Config, out io.Writer) (Report, error) {
	out = &lockedWriter{w: out} // progress comes from several goroutines
	if cfg.Duration == 0 {
		cfg.Duration = 30 * time.Second
	}
	if cfg.Hosts == 0 {
		cfg.Hosts = 3
	}
	if cfg.Agents == 0 {
		cfg.Agents = 3
	}
	if cfg.Kills < 0 {
		cfg.Kills = 0
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	var rep Report
	fmt.Fprintf(out, "starting a 3-server ZooKeeper ensemble on loopback...\n")
	ens, err := zktest.Start(ctx, zktest.Config{Servers: 3, Name: "sandbox-a"})
	if err != nil {
		return rep, err
	}
	defer ens.Close()
	fmt.Fprintf(out, "ensemble up: %s\n", ens.ConnectString())

	var proxies []*proxytest.Proxy
	defer func() {
		for _, p := range proxies {
			p.Close()
		}
	}()
	for i := 0; i < cfg.Hosts; i++ {
		p, err := proxytest.Start(proxy.Config{Upstream: ens.Addrs(), Logger: cfg.Logger.With("host", i+1)})
		if err != nil {
			return rep, err
		}
		proxies = append(proxies, p)
		fmt.Fprintf(out, "host %d: sidecar proxy on %s\n", i+1, p.Addr)
	}

	admin, _, err := zk.Connect(ens.Addrs(), 10*time.Second, zk.WithLogInfo(false))
	if err != nil {
		return rep, err
	}
	defer admin.Close()
	for _, p := range []string{"/mesos", "/sandbox"} {
		if _, err := admin.Create(p, nil, 0, zk.WorldACL(zk.PermAll)); err != nil && !errors.Is(err, zk.ErrNodeExists) {
			return rep, fmt.Errorf("sandbox: create %s: %w", p, err)
		}
	}

	var c counters
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	var lags lagSamples
	var ensB *zktest.Ensemble
	syncCtx, stopSync := context.WithCancel(ctx)
	defer stopSync()
	syncDone := make(chan struct{})
	if cfg.NoSync {
		close(syncDone)
	} else {
		fmt.Fprintf(out, "starting ensemble B (the migration target) and continuous sync A <-> B of /mesos and /sandbox...\n")
		if ensB, err = zktest.Start(ctx, zktest.Config{Servers: 3, Name: "sandbox-b"}); err != nil {
			return rep, err
		}
		defer ensB.Close()
		// The same constructor the sync command and the control plane use.
		dial := replicator.Dialer{Ensembles: [2][]string{ens.Addrs(), ensB.Addrs()}}
		cont, err := replicator.NewContinuous(replicator.ContinuousConfig{
			Dial:  dial.Dial,
			Roots: []string{"/mesos", "/sandbox"}, InitialSync: true, Logger: cfg.Logger,
			LagAlertAfter: time.Hour, OnLag: lags.add,
		})
		if err != nil {
			return rep, err
		}
		go func() {
			defer close(syncDone)
			_ = cont.Run(syncCtx)
		}()
	}
	var wg sync.WaitGroup
	var conns []*zk.Conn
	defer func() {
		for _, cn := range conns {
			cn.Close()
		}
	}()
	dial := func(p *proxytest.Proxy) (*zk.Conn, error) {
		cn, ev, err := zk.Connect([]string{p.Addr}, 10*time.Second, zk.WithLogInfo(false))
		if err != nil {
			return nil, err
		}
		conns = append(conns, cn)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for e := range ev {
				switch e.State {
				case zk.StateExpired:
					c.expired.Add(1)
				case zk.StateDisconnected:
					if runCtx.Err() == nil { // not our own Close at the end
						c.disconnects.Add(1)
					}
				}
			}
		}()
		return cn, nil
	}
	acked := make([]atomic.Int64, cfg.Hosts)
	for i, p := range proxies {
		master, err := dial(p)
		if err != nil {
			return rep, err
		}
		if _, err := retry(runCtx, &c, func() (string, error) {
			return master.Create("/mesos/json.info_", []byte(fmt.Sprintf(`{"hostname":"master%d"}`, i+1)),
				zk.FlagEphemeral|zk.FlagSequence, zk.WorldACL(zk.PermAll))
		}); err != nil {
			return rep, fmt.Errorf("sandbox: master %d contend: %w", i+1, err)
		}
		for a := 0; a < cfg.Agents; a++ {
			agent, err := dial(p)
			if err != nil {
				return rep, err
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				follow(runCtx, agent, &c)
			}()
		}
		writer, err := dial(p)
		if err != nil {
			return rep, err
		}
		path := fmt.Sprintf("/sandbox/counter-%d", i+1)
		if _, err := writer.Create(path, []byte("0"), 0, zk.WorldACL(zk.PermAll)); err != nil && !errors.Is(err, zk.ErrNodeExists) {
			return rep, err
		}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			write(runCtx, writer, path, &c, &acked[i])
		}(i)
	}
	rep.Sessions = len(conns)
	fmt.Fprintf(out, "load: %d masters contending, %d agents following the leader, %d writers; %d sessions through the proxies\n",
		cfg.Hosts, cfg.Hosts*cfg.Agents, cfg.Hosts, rep.Sessions)

	start := time.Now()
	faults := faultPlan(cfg)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var lastR, lastW int64
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case now := <-tick.C:
			el := now.Sub(start)
			for len(faults) > 0 && el >= faults[0] {
				faults = faults[1:]
				victim := busiestServer(ens, proxies)
				fmt.Fprintf(out, "%5.1fs  FAULT: killing ZooKeeper server %d (%s) with SIGKILL\n", el.Seconds(), victim.ID, victim.Addr())
				_ = ens.Kill(victim.ID)
				rep.ServerKills++
				wg.Add(1)
				go func(id int) {
					defer wg.Done()
					select {
					case <-runCtx.Done():
						return
					case <-time.After(3 * time.Second):
					}
					if err := ens.Restart(runCtx, id); err == nil {
						fmt.Fprintf(out, "%5.1fs  server %d restarted and serving\n", time.Since(start).Seconds(), id)
					}
				}(victim.ID)
			}
			r, w := c.reads.Load(), c.writes.Load()
			fmt.Fprintf(out, "%5.1fs  reads %6d/s  writes %5d/s  conn-loss %d  expired %d  leader-changes %d  re-attached %.0f\n",
				el.Seconds(), r-lastR, w-lastW, c.connLoss.Load(), c.expired.Load(), c.leaderChanges.Load(), reattaches(proxies))
			lastR, lastW = r, w
			if el >= cfg.Duration {
				done = true
			}
		}
	}
	stop()
	// Every server back before checking.
	for _, s := range ens.Servers {
		if !s.Running() {
			_ = ens.Restart(context.Background(), s.ID)
		}
	}
	for i := range proxies {
		path := fmt.Sprintf("/sandbox/counter-%d", i+1)
		var data []byte
		_, err := retry(ctx, &c, func() (string, error) {
			// A follower may serve a value older than one the leader
			// acknowledged (reads are not linearizable across
			// sessions): sync first, ZooKeeper's read-your-peers recipe.
			if _, err := admin.Sync(path); err != nil {
				return "", err
			}
			var err error
			data, _, err = admin.Get(path)
			return "", err
		})
		if err != nil || parseInt(string(data)) < acked[i].Load() {
			rep.LostWrites++
			c.noteErr(fmt.Errorf("counter %s: read %q (err %v) after sync, but %d was acknowledged", path, data, err, acked[i].Load()))
		}
	}
	for _, cn := range conns {
		cn.Close()
	}
	conns = nil
	wg.Wait()
	rep.Elapsed = time.Since(start)
	if ensB != nil {
		// The replicator is still running: B must converge on its own,
		// including the deletion of the ephemerals of the sessions just
		// closed.
		rep.SyncChecked = true
		settle := time.Now()
		rep.SyncEqual, rep.SyncDifferences = awaitEqual(ctx, ens, ensB, []string{"/mesos", "/sandbox"}, out, 30*time.Second)
		rep.SyncSettle = time.Since(settle)
		rep.LagP50, rep.LagP99 = lags.quantiles()
	}
	stopSync()
	<-syncDone
	rep.Reads, rep.Writes = c.reads.Load(), c.writes.Load()
	rep.ConnectionLosses, rep.OtherErrors = c.connLoss.Load(), c.other.Load()
	rep.Expired, rep.Disconnects, rep.LeaderChanges = c.expired.Load(), c.disconnects.Load(), c.leaderChanges.Load()
	rep.Reattaches = reattaches(proxies)
	rep.Errors = c.errs
	printReport(out, rep)
	return rep, nil
}

func parseInt(s string) int64 {
	var v int64
	for _, ch := range s {
		if ch < '0' || ch > '9' {
			return -1
		}
		v = v*10 + int64(ch-'0')
	}
	return v
}

func faultPlan(cfg Config) []time.Duration {
	var out []time.Duration
	for k := 1; k <= cfg.Kills; k++ {
		out = append(out, cfg.Duration*time.Duration(k)/time.Duration(cfg.Kills+1))
	}
	return out
}

// busiestServer picks the running ensemble server with the most sessions
// attached through the proxies: the worst server to lose.
func busiestServer(ens *zktest.Ensemble, proxies []*proxytest.Proxy) *zktest.Server {
	count := map[string]int{}
	for _, p := range proxies {
		for _, id := range p.SessionIDs() {
			if a, ok := p.SessionUpstream(id); ok {
				count[a]++
			}
		}
	}
	var running []*zktest.Server
	for _, s := range ens.Servers {
		if s.Running() {
			running = append(running, s)
		}
	}
	sort.Slice(running, func(i, j int) bool { return count[running[i].Addr()] > count[running[j].Addr()] })
	return running[0]
}

func reattaches(proxies []*proxytest.Proxy) float64 {
	var n float64
	for _, p := range proxies {
		mfs, _ := p.Registry.Gather()
		for _, mf := range mfs {
			if mf.GetName() != "zkmigrate_proxy_upstream_reconnects_total" {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "result" && l.GetValue() == "ok" {
						n += m.GetCounter().GetValue()
					}
				}
			}
		}
	}
	return n
}

// retry repeats f while it fails with connection loss, as ZooKeeper
// recipes do: the request may or may not have been applied.
func retry[T any](ctx context.Context, c *counters, f func() (T, error)) (T, error) {
	for {
		v, err := f()
		if !transient(err) {
			return v, err
		}
		c.connLoss.Add(1)
		select {
		case <-ctx.Done():
			return v, err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// transient reports the go-zookeeper errors that mean "retry": the
// connection was lost (the outcome of a write is unknown) or is being
// re-established.
func transient(err error) bool {
	return errors.Is(err, zk.ErrConnectionClosed) || errors.Is(err, zk.ErrNoServer)
}

// follow is a Mesos agent's leader detection: watch /mesos's children, the
// lowest json.info_ sequence leads, read its MasterInfo.
func follow(ctx context.Context, conn *zk.Conn, c *counters) {
	var current string
	for ctx.Err() == nil {
		kids, _, ch, err := conn.ChildrenW("/mesos")
		if err != nil {
			if transient(err) {
				c.connLoss.Add(1)
				time.Sleep(50 * time.Millisecond)
				continue
			}
			if ctx.Err() == nil {
				c.other.Add(1)
				c.noteErr(fmt.Errorf("agent: %w", err))
			}
			return
		}
		c.reads.Add(1)
		var infos []string
		for _, k := range kids {
			if strings.HasPrefix(k, "json.info_") {
				infos = append(infos, k)
			}
		}
		sort.Strings(infos)
		if len(infos) > 0 {
			leader := infos[0]
			if _, _, err := conn.Get("/mesos/" + leader); err == nil {
				c.reads.Add(1)
			}
			if current != "" && leader != current {
				c.leaderChanges.Add(1)
			}
			current = leader
		}
		// Agents also poll the leader's info now and then (state reads).
		poll := time.NewTicker(20 * time.Millisecond)
	wait:
		for {
			select {
			case <-ctx.Done():
				poll.Stop()
				return
			case <-ch:
				break wait
			case <-poll.C:
				if current != "" {
					if _, _, err := conn.Get("/mesos/" + current); err == nil {
						c.reads.Add(1)
					} else if transient(err) {
						c.connLoss.Add(1)
					}
				}
			}
		}
		poll.Stop()
	}
}

// write updates a counter node as fast as it is acknowledged and remembers
// the highest acknowledged value.
func write(ctx context.Context, conn *zk.Conn, path string, c *counters, acked *atomic.Int64) {
	for n := int64(1); ctx.Err() == nil; n++ {
		_, err := conn.Set(path, []byte(fmt.Sprint(n)), -1)
		switch {
		case err == nil:
			c.writes.Add(1)
			acked.Store(n)
		case transient(err):
			c.connLoss.Add(1) // outcome unknown: the next write supersedes it
			time.Sleep(20 * time.Millisecond)
		default:
			if ctx.Err() == nil {
				c.other.Add(1)
				c.noteErr(fmt.Errorf("writer %s: %w", path, err))
			}
			return
		}
	}
}

func printReport(out io.Writer, r Report) {
	verdict := "PASS"
	if !r.OK() {
		verdict = "FAIL"
	}
	fmt.Fprintf(out, `
sandbox report (%s)
  sessions through proxies   %d
  reads / writes             %d / %d
  ZooKeeper servers killed   %d
  sessions re-attached       %.0f   (moved to another server by a proxy)
  connection-loss errors     %d   (seen by clients while reconnecting; retried)
  sessions expired           %d   (must be 0)
  client reconnects          %d   (a write was in flight on the killed server: the client
                                  reconnects to learn its outcome; its session is kept)
  leader changes seen        %d   (must be 0)
  acknowledged writes lost   %d   (must be 0)
  other errors               %d
  verdict                    %s
`, r.Elapsed.Round(time.Second), r.Sessions, r.Reads, r.Writes, r.ServerKills, r.Reattaches, r.ConnectionLosses,
		r.Expired, r.Disconnects, r.LeaderChanges, r.LostWrites, r.OtherErrors, verdict)
	if r.SyncChecked {
		eq := "EQUAL"
		if !r.SyncEqual {
			eq = "DIFFERENT: " + strings.Join(r.SyncDifferences, "; ")
		}
		fmt.Fprintf(out, "  ensemble B vs A (digest)   %s (must be equal), %v after the load stopped\n"+
			"                             (closed sessions' ephemerals go, then their copies on B)\n  sync lag p50 / p99         %v / %v\n",
			eq, r.SyncSettle.Round(100*time.Millisecond), r.LagP50.Round(100*time.Microsecond), r.LagP99.Round(100*time.Microsecond))
	}
	for _, err := range r.Errors {
		fmt.Fprintf(out, "  error: %v\n", err)
	}
}

// lagSamples collects the replicator's lag measurements.
type lagSamples struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *lagSamples) add(_ replicator.Side, d time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d)
	l.mu.Unlock()
}

func (l *lagSamples) quantiles() (p50, p99 time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.d) == 0 {
		return 0, 0
	}
	s := append([]time.Duration(nil), l.d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2], s[len(s)*99/100]
}

// awaitEqual compares A's and B's digests until they are equal or the time
// is up, and returns the last differences.
func awaitEqual(ctx context.Context, a, b *zktest.Ensemble, roots []string, out io.Writer, within time.Duration) (bool, []string) {
	var ep replicator.Endpoints
	for _, e := range []*zktest.Ensemble{a, b} {
		c, err := zkclient.Dial(ctx, e.Addrs(), zkclient.Options{})
		if err != nil {
			return false, []string{err.Error()}
		}
		defer c.Close()
		if e == a {
			ep.Source = []*zkclient.Conn{c}
		} else {
			ep.Target = []*zkclient.Conn{c}
		}
	}
	deadline := time.Now().Add(within)
	for {
		vs, err := replicator.Validate(ctx, ep, roots, 5)
		if err != nil {
			return false, []string{err.Error()}
		}
		var diffs []string
		for _, v := range vs {
			for _, d := range v.Differences {
				diffs = append(diffs, d.String())
			}
		}
		if len(diffs) == 0 || time.Now().After(deadline) {
			for _, v := range vs {
				fmt.Fprintf(out, "digest %s: A %s (%d znodes), B %s (%d znodes)\n", v.Root, v.SourceDigest[:16], v.SourceNodes, v.TargetDigest[:16], v.TargetNodes)
			}
			return len(diffs) == 0, diffs
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// lockedWriter serializes writes from the sandbox's goroutines.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
