// Package scale measures a migration at Mesos scale (issue 12 item 5):
// thousands of agents, each its own ZooKeeper session through the sidecar
// proxies, and tens of thousands of znodes of framework state, moved from
// ensemble A to ensemble B. It reports the snapshot copy, the cutover (the
// flip of every proxy), the write pause a framework sees at the flip, and
// the proxies' memory and CPU per 1,000 sessions, and checks the
// guarantees the figures mean nothing without: no session expired, the
// agents' leader unchanged, every acknowledged write on B, digests equal.
//
// Run: make bench (or go test -run '^$' -bench Scale ./bench/scale/).
// ZKM_SCALE_AGENTS (default 5000), ZKM_SCALE_ZNODES (10000) and
// ZKM_SCALE_PROXIES (5) size it.
package scale

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/bench"
	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/membership"
	"github.com/zk-migrate/zk-migrate/replicator"
	"github.com/zk-migrate/zk-migrate/zkclient"
	"github.com/zk-migrate/zk-migrate/zktest"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// proc is one proxy process.
type proc struct {
	name, listen string
	cmd          *exec.Cmd
}

// cpuSeconds reads a process's user and system CPU time from /proc.
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name (which may hold spaces) start after ")".
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("scale: short /proc/%d/stat", pid)
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100, nil // USER_HZ is 100 on Linux
}

// agents is the agents' side of the run: each a session through a proxy
// that watches the masters' znodes and follows the lowest json.info_, as a
// Mesos agent's leader detector does.
type agents struct {
	mu      sync.Mutex
	conns   []*zk.Conn
	leaders map[string]int // leader znode -> agents following it
	expired atomic.Int64
	errs    atomic.Int64
	lastErr atomic.Value
	wg      sync.WaitGroup
	stop    chan struct{}
}

func (a *agents) follow(c *zk.Conn, ev <-chan zk.Event) {
	defer a.wg.Done()
	go func() {
		for e := range ev {
			if e.State == zk.StateExpired {
				a.expired.Add(1)
			}
		}
	}()
	current := ""
	for {
		kids, _, w, err := c.ChildrenW("/mesos")
		if err != nil {
			a.errs.Add(1)
			a.lastErr.Store(err.Error())
			select {
			case <-a.stop:
				return
			case <-time.After(200 * time.Millisecond):
				continue
			}
		}
		leader := lowestInfo(kids)
		if leader != current {
			if leader != "" {
				if _, _, err := c.Get("/mesos/" + leader); err != nil {
					a.errs.Add(1)
					a.lastErr.Store(err.Error())
				}
			}
			a.mu.Lock()
			if current != "" {
				a.leaders[current]--
			}
			a.leaders[leader]++
			a.mu.Unlock()
			current = leader
		}
		select {
		case <-a.stop:
			return
		case <-w:
		}
	}
}

func lowestInfo(kids []string) string {
	var infos []string
	for _, k := range kids {
		if strings.HasPrefix(k, "json.info_") {
			infos = append(infos, k)
		}
	}
	sort.Strings(infos)
	if len(infos) == 0 {
		return ""
	}
	return infos[0]
}

func BenchmarkScaleMigration(b *testing.B) {
	nAgents := envInt("ZKM_SCALE_AGENTS", 5000)
	nZnodes := envInt("ZKM_SCALE_ZNODES", 10000)
	nProxies := envInt("ZKM_SCALE_PROXIES", 5)
	ctx := context.Background()
	dir := b.TempDir()
	bin := filepath.Join(dir, "zk-migrate")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/zk-migrate").CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	var ens [2]*zktest.Ensemble
	for i, name := range []string{"scale-a", "scale-b"} {
		e, err := zktest.Start(ctx, zktest.Config{Servers: 3, Name: name, HeapMB: 512})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(e.Close)
		ens[i] = e
	}
	dialer := replicator.Dialer{Ensembles: [2][]string{ens[0].Addrs(), ens[1].Addrs()}}

	// Framework state on A: frameworks with their tasks.
	a, err := zkclient.Dial(ctx, ens[0].Addrs(), zkclient.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close()
	created := time.Now()
	if err := frameworkState(ctx, a, nZnodes); err != nil {
		b.Fatal(err)
	}
	b.Logf("%d znodes of framework state on A in %v", nZnodes, time.Since(created).Round(time.Millisecond))

	// Phase 1: the snapshot copy, then continuous sync beside the proxies.
	ep, closeEP, err := dialer.Endpoints(ctx, 4)
	if err != nil {
		b.Fatal(err)
	}
	res, err := replicator.Sync(ctx, ep, []string{"/mesos"}, replicator.Options{})
	closeEP()
	if err != nil {
		b.Fatal(err)
	}
	copyRate := float64(res.Nodes) / res.Elapsed.Seconds()
	cont, err := replicator.NewContinuous(replicator.ContinuousConfig{Dial: dialer.Dial, Roots: []string{"/mesos"},
		Primary: ensemble.Source, Heartbeat: -1, ReconcileEvery: time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	syncCtx, stopSync := context.WithCancel(ctx)
	syncDone := make(chan struct{})
	go func() { defer close(syncDone); _ = cont.Run(syncCtx) }()
	defer func() { stopSync(); <-syncDone }()

	// The proxies, as separate processes, found by the control plane in
	// gossip.
	ctl, err := membership.Join(membership.Config{Name: "control-scale", BindAddr: freeAddr(b), Fast: true,
		Meta: membership.Meta{Role: membership.RoleControl}})
	if err != nil {
		b.Fatal(err)
	}
	defer ctl.Leave()
	const token = "scale-bench-flip-token-0123456789"
	tokenFile := filepath.Join(dir, "flip.token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	var proxies []*proc
	for i := 0; i < nProxies; i++ {
		p := &proc{name: fmt.Sprintf("proxy-%d", i), listen: freeAddr(b)}
		p.cmd = exec.Command(bin, "proxy", "--listen", p.listen, "--source", ens[0].ConnectString(), "--target", ens[1].ConnectString(),
			"--admin-addr", freeAddr(b), "--admin-token-file", tokenFile, "--metrics-addr", "", "--name", p.name,
			"--state-dir", filepath.Join(dir, p.name), "--max-connections", "20000", "--max-connections-per-ip", "20000",
			"--gossip-addr", freeAddr(b), "--gossip-join", ctl.Members()[0].Addr, "--gossip-insecure", "--log-level", "error")
		p.cmd.Stderr = os.Stderr
		if err := p.cmd.Start(); err != nil {
			b.Fatal(err)
		}
		defer func() { _ = p.cmd.Process.Kill(); _ = p.cmd.Wait() }()
		proxies = append(proxies, p)
	}
	names := make([]string, len(proxies))
	for i, p := range proxies {
		names[i] = p.name
		waitFor(b, 30*time.Second, p.name+" serves", func() bool {
			out, err := zktest.FourLetterWord(p.listen, "ruok", time.Second)
			return err == nil && out == "imok"
		})
	}
	waitFor(b, 30*time.Second, "every proxy in gossip", func() bool {
		live, _ := (&membership.Fleet{Agent: ctl}).Live(ctx)
		return len(live) == len(proxies)
	})
	idleRSS := make([]int64, len(proxies))
	for i, p := range proxies {
		idleRSS[i], _ = bench.RSSBytes(p.cmd.Process.Pid)
	}

	// Three masters contend through the first proxies; the lowest leads.
	var masters []*zk.Conn
	for i := 0; i < 3; i++ {
		c := connect(b, proxies[i%len(proxies)].listen, 10*time.Second)
		masters = append(masters, c)
		if _, err := c.Create("/mesos/json.info_", []byte(fmt.Sprintf(`{"id":"master-%d"}`, i)), zk.FlagEphemeral|zk.FlagSequence, zk.WorldACL(zk.PermAll)); err != nil {
			b.Fatal(err)
		}
	}

	// The agents.
	ag := &agents{leaders: map[string]int{}, stop: make(chan struct{})}
	opened := time.Now()
	var openWG sync.WaitGroup
	sem := make(chan struct{}, 32)
	var openErr atomic.Value
	for i := 0; i < nAgents; i++ {
		openWG.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer openWG.Done()
			defer func() { <-sem }()
			c, ev, err := zk.Connect([]string{proxies[i%len(proxies)].listen}, 10*time.Second, zk.WithLogInfo(false), zk.WithLogger(quiet{}))
			if err != nil {
				openErr.Store(err)
				return
			}
			if err := waitSession(ev); err != nil {
				openErr.Store(err)
				c.Close()
				return
			}
			ag.mu.Lock()
			ag.conns = append(ag.conns, c)
			ag.mu.Unlock()
			ag.wg.Add(1)
			go ag.follow(c, ev)
		}(i)
	}
	openWG.Wait()
	if err, _ := openErr.Load().(error); err != nil {
		b.Fatalf("opening agent sessions: %v", err)
	}
	openTime := time.Since(opened)
	defer func() {
		close(ag.stop)
		for _, c := range ag.conns {
			c.Close()
		}
		ag.wg.Wait()
	}()
	waitFor(b, 60*time.Second, "every agent follows the leader", func() bool {
		ag.mu.Lock()
		defer ag.mu.Unlock()
		return ag.leaders[lowestOf(b, masters[0])] == nAgents
	})
	leader := lowestOf(b, masters[0])
	time.Sleep(2 * time.Second) // settle: shadow sessions, mirrors
	rss := make([]int64, len(proxies))
	cpu0 := make([]float64, len(proxies))
	for i, p := range proxies {
		rss[i], _ = bench.RSSBytes(p.cmd.Process.Pid)
		cpu0[i], _ = cpuSeconds(p.cmd.Process.Pid)
	}
	const steady = 10 * time.Second
	time.Sleep(steady) // idle sessions: pings only
	var cpuIdle float64
	for i, p := range proxies {
		c, _ := cpuSeconds(p.cmd.Process.Pid)
		cpuIdle += c - cpu0[i]
	}

	// A framework writes its state through the first proxy the whole time.
	fw := connect(b, proxies[0].listen, 10*time.Second)
	var lat []time.Duration
	var latAt []time.Time
	var acked atomic.Int64
	var writeErrs atomic.Int64
	var errMu sync.Mutex
	var writeErrSeen []string
	writing := make(chan struct{})
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		for n := int64(1); ; n++ {
			select {
			case <-writing:
				return
			default:
			}
			t0 := time.Now()
			_, err := fw.Set("/mesos/frameworks/f-0", []byte(strconv.FormatInt(n, 10)), -1)
			if err != nil {
				writeErrs.Add(1)
				errMu.Lock()
				writeErrSeen = append(writeErrSeen, fmt.Sprintf("%s after %v: %v", t0.Format("15:04:05.000"), time.Since(t0).Round(time.Millisecond), err))
				errMu.Unlock()
				time.Sleep(10 * time.Millisecond)
				continue
			}
			lat = append(lat, time.Since(t0))
			latAt = append(latAt, t0)
			acked.Store(n)
		}
	}()
	time.Sleep(2 * time.Second)

	// The cutover: every proxy flips to B.
	fleet := &membership.Fleet{Agent: ctl, Token: token}
	flipStart := time.Now()
	var done []string
	for try := 0; try < 5 && len(done) < len(names); try++ {
		fctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		t0 := time.Now()
		done, err = fleet.Flip(fctx, "scale", 1, ensemble.Target, names)
		cancel()
		b.Logf("flip attempt %d: %d of %d proxies acknowledged in %v (err %v)", try+1, len(done), len(names), time.Since(t0).Round(time.Millisecond), err)
	}
	cutover := time.Since(flipStart)
	if len(done) != len(names) {
		b.Fatalf("flip acknowledged by %v of %v", done, names)
	}
	// The control plane records the new primary once every proxy has
	// flipped; its replicator follows it.
	if err := cont.SetPrimary(ensemble.Target); err != nil {
		b.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	close(writing)
	<-writerDone

	// The guarantees.
	waitFor(b, 15*time.Second, "agents still on the same leader", func() bool {
		ag.mu.Lock()
		defer ag.mu.Unlock()
		return ag.leaders[leader] == nAgents
	})
	if n := ag.expired.Load(); n > 0 {
		b.Fatalf("%d agent sessions expired", n)
	}
	zb, err := zkclient.Dial(ctx, ens[1].Addrs(), zkclient.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer zb.Close()
	if got, _, err := zb.Get(ctx, "/mesos/frameworks/f-0"); err != nil || string(got) != strconv.FormatInt(acked.Load(), 10) {
		b.Fatalf("the last acknowledged write (%d) on B: %q %v", acked.Load(), got, err)
	}
	if _, err := zb.Exists(ctx, "/mesos/"+leader); err != nil {
		b.Fatalf("the leading master's json.info_ on B: %v", err)
	}
	var vs []replicator.Verdict
	waitFor(b, 60*time.Second, "digests equal", func() bool {
		ep, closeEP, err := dialer.Endpoints(ctx, 4)
		if err != nil {
			return false
		}
		defer closeEP()
		vs, err = replicator.Validate(ctx, ep, []string{"/mesos"}, 5)
		return err == nil && vs[0].Equal
	})

	errMu.Lock()
	for _, e := range writeErrSeen {
		b.Logf("framework write error: %s", e)
	}
	errMu.Unlock()
	// Figures: the pause is the longest write latency from the flip's
	// start to its end; p50/p99 over the writes in that window.
	var window []time.Duration
	for i, t := range latAt {
		if !t.Add(lat[i]).Before(flipStart) && t.Before(flipStart.Add(cutover)) {
			window = append(window, lat[i])
		}
	}
	sort.Slice(window, func(i, j int) bool { return window[i] < window[j] })
	pct := func(p float64) time.Duration {
		if len(window) == 0 {
			return 0
		}
		return window[min(len(window)-1, int(p*float64(len(window))))]
	}
	// The pause a framework sees: the longest time between two
	// acknowledged writes across the flip (errors and retries included).
	var gap time.Duration
	for i := 1; i < len(latAt); i++ {
		prev, cur := latAt[i-1].Add(lat[i-1]), latAt[i].Add(lat[i])
		if cur.After(flipStart) && prev.Before(flipStart.Add(cutover)) {
			gap = max(gap, cur.Sub(prev))
		}
	}
	var before []time.Duration
	for i, t := range latAt {
		if t.Add(lat[i]).Before(flipStart) {
			before = append(before, lat[i])
		}
	}
	sort.Slice(before, func(i, j int) bool { return before[i] < before[j] })
	var rssSum, idleSum int64
	for i := range rss {
		rssSum += rss[i]
		idleSum += idleRSS[i]
	}
	perK := float64(nAgents+len(masters)) / 1000
	b.ReportMetric(cutover.Seconds(), "cutover-s")
	b.ReportMetric(float64(gap/time.Millisecond), "pause-max-ms")
	b.ReportMetric(float64(rssSum-idleSum)/(1<<20)/perK, "proxy-MB/1k-sessions")
	fmt.Printf("\nmigration at scale (%d CPUs; two 3-server ensembles; %d proxies as processes)\n", runtime.NumCPU(), len(proxies))
	fmt.Printf("%-44s %s\n", "agents (sessions through the proxies)", strconv.Itoa(nAgents))
	fmt.Printf("%-44s %d in %v (%.0f znodes/s)\n", "snapshot copy A to B", res.Nodes, res.Elapsed.Round(time.Millisecond), copyRate)
	fmt.Printf("%-44s %v (%.0f sessions/s)\n", "agent sessions opened", openTime.Round(time.Millisecond), float64(nAgents)/openTime.Seconds())
	fmt.Printf("%-44s %v\n", "cutover (every proxy flipped to B)", cutover.Round(time.Millisecond))
	if len(before) > 0 {
		fmt.Printf("%-44s p50 %v\n", "framework write latency before the flip", before[len(before)/2].Round(time.Microsecond))
	}
	fmt.Printf("%-44s p50 %v  p99 %v  max %v  (%d writes)\n", "framework write latency during the flip", pct(0.5).Round(time.Microsecond),
		pct(0.99).Round(time.Microsecond), pct(1).Round(time.Microsecond), len(window))
	fmt.Printf("%-44s %v\n", "write pause (longest gap between acks)", gap.Round(time.Millisecond))
	fmt.Printf("%-44s %.1f MB (idle proxies %.1f MB in all)\n", "proxy RSS per 1,000 sessions", float64(rssSum-idleSum)/(1<<20)/perK, float64(idleSum)/(1<<20))
	fmt.Printf("%-44s %.1f%% of one CPU\n", "proxy CPU per 1,000 idle sessions", 100*cpuIdle/steady.Seconds()/perK)
	fmt.Printf("%-44s sessions expired %d, leader changes 0, digests equal, every acknowledged write on B\n", "guarantees", ag.expired.Load())
	fmt.Printf("%-44s %d (must be 0: a client must see a pause, never an error)\n", "framework write errors", writeErrs.Load())
}

// frameworkState creates n znodes under /mesos/frameworks on A: frameworks
// of 100 tasks each, pipelined.
func frameworkState(ctx context.Context, c *zkclient.Conn, n int) error {
	for _, p := range []string{"/mesos", "/mesos/frameworks"} {
		if _, err := c.Create(ctx, p, nil, zkclient.OpenACL, 0); err != nil && jute.CodeOf(err) != jute.CodeNodeExists {
			return err
		}
	}
	var paths []string
	for f := 0; len(paths) < n; f++ {
		paths = append(paths, fmt.Sprintf("/mesos/frameworks/f-%d", f))
		for t := 0; t < 99 && len(paths) < n; t++ {
			paths = append(paths, fmt.Sprintf("/mesos/frameworks/f-%d/task-%04d", f, t))
		}
	}
	data := []byte(`{"state":"TASK_RUNNING","agent":"agent-0000","resources":{"cpus":0.1,"mem":32}}`)
	const window = 512
	calls := make([]*zkclient.Call, 0, window)
	flush := func() error {
		for _, call := range calls {
			<-call.Done
			if call.Err != nil && jute.CodeOf(call.Err) != jute.CodeNodeExists {
				return call.Err
			}
		}
		calls = calls[:0]
		return nil
	}
	for i, p := range paths {
		// A framework's node before its tasks: flush at each framework.
		if i > 0 && !strings.Contains(p, "/task-") {
			if err := flush(); err != nil {
				return err
			}
		}
		calls = append(calls, c.Go(jute.OpCreate, &jute.CreateRequest{Path: p, Data: data, ACL: zkclient.OpenACL}, &jute.CreateResponse{}))
		if len(calls) == window {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

type quiet struct{}

func (quiet) Printf(string, ...any) {}

func connect(b *testing.B, addr string, timeout time.Duration) *zk.Conn {
	b.Helper()
	c, ev, err := zk.Connect([]string{addr}, timeout, zk.WithLogInfo(false), zk.WithLogger(quiet{}))
	if err != nil {
		b.Fatal(err)
	}
	if err := waitSession(ev); err != nil {
		b.Fatal(err)
	}
	go func() {
		for range ev {
		}
	}()
	b.Cleanup(c.Close)
	return c
}

func waitSession(ev <-chan zk.Event) error {
	deadline := time.After(90 * time.Second)
	for {
		select {
		case e := <-ev:
			if e.State == zk.StateHasSession {
				return nil
			}
		case <-deadline:
			return fmt.Errorf("no session within 90 s")
		}
	}
}

func lowestOf(b *testing.B, c *zk.Conn) string {
	b.Helper()
	kids, _, err := c.Children("/mesos")
	if err != nil {
		b.Fatal(err)
	}
	return lowestInfo(kids)
}

func waitFor(b *testing.B, d time.Duration, what string, cond func() bool) {
	b.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			b.Fatalf("not within %v: %s", d, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func freeAddr(b *testing.B) string {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
