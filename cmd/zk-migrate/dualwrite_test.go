package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/membership"
	"github.com/zk-migrate/zk-migrate/replicator"
	"github.com/zk-migrate/zk-migrate/zkclient"
	"github.com/zk-migrate/zk-migrate/zktest"
)

// dualProxy is one `zk-migrate proxy --source --target` process.
type dualProxy struct {
	cmd                    *exec.Cmd
	listen, metrics, admin string
	logs                   *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startDualProxy(t *testing.T, a, b *zktest.Ensemble) *dualProxy {
	t.Helper()
	p := &dualProxy{listen: freeAddr(t), metrics: freeAddr(t), admin: freeAddr(t), logs: &syncBuffer{}}
	p.cmd = exec.Command(bin, "proxy", "--listen", p.listen, "--source", a.ConnectString(), "--target", b.ConnectString(),
		"--metrics-addr", p.metrics, "--admin-addr", p.admin, "--log-level", "info")
	p.cmd.Stderr = p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		_ = p.cmd.Wait()
		if t.Failed() {
			t.Logf("proxy %s log:\n%s", p.listen, p.logs.String())
		}
	})
	waitFor(t, func() bool {
		out, err := zktest.FourLetterWord(p.listen, "ruok", time.Second)
		return err == nil && out == "imok"
	})
	return p
}

// metric reads one unlabelled gauge or counter from the proxy's /metrics.
func (p *dualProxy) metric(t *testing.T, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + p.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == name {
			v, _ := strconv.ParseFloat(f[1], 64)
			return v
		}
	}
	return 0
}

// shadowOf asks the proxy's admin endpoint for a client session's shadow
// session id.
func (p *dualProxy) shadowOf(t *testing.T, session int64) int64 {
	t.Helper()
	resp, err := http.Get("http://" + p.admin + "/admin/v1/sessions")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Sessions []struct{ Session, Shadow string }
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	for _, s := range body.Sessions {
		if s.Session == fmt.Sprintf("0x%x", session) {
			id, _ := strconv.ParseUint(strings.TrimPrefix(s.Shadow, "0x"), 16, 64)
			return int64(id)
		}
	}
	t.Fatalf("admin endpoint of %s does not list session 0x%x", p.listen, session)
	return 0
}

// dwClient is one application client of a proxy.
type dwClient struct {
	conn      *zk.Conn
	proxy     *dualProxy
	ephemeral string
	noticed   atomic.Int64 // disconnects and unexpected errors: what the client saw
}

// expected are the answers a concurrent workload must accept: another
// writer got there first.
func expected(err error) bool {
	return err == nil || errors.Is(err, zk.ErrBadVersion) || errors.Is(err, zk.ErrNodeExists) ||
		errors.Is(err, zk.ErrNoNode) || errors.Is(err, zk.ErrNotEmpty)
}

// work runs the shared workload until stop: versioned and unversioned
// setData on shared znodes, create/delete churn, sequential creates under
// one parent, multi.
func (c *dwClient) work(t *testing.T, stop <-chan struct{}, errs chan<- error) {
	acl := zk.WorldACL(zk.PermAll)
	note := func(what string, err error) {
		if !expected(err) {
			c.noticed.Add(1)
			select {
			case errs <- fmt.Errorf("%s through %s: %w", what, c.proxy.listen, err):
			default:
			}
		}
	}
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		shared := fmt.Sprintf("/dw/s%d", rand.IntN(5))
		switch i % 6 {
		case 0:
			_, st, err := c.conn.Get(shared)
			note("get", err)
			if err == nil {
				_, err = c.conn.Set(shared, []byte(fmt.Sprintf("v%d", i)), st.Version)
				note("versioned set", err)
			}
		case 1:
			_, err := c.conn.Set(shared, []byte(fmt.Sprintf("w%d", i)), -1)
			note("set", err)
		case 2:
			_, err := c.conn.Create(fmt.Sprintf("/dw/c%d", rand.IntN(10)), []byte("c"), 0, acl)
			note("churn create", err)
		case 3:
			note("churn delete", c.conn.Delete(fmt.Sprintf("/dw/c%d", rand.IntN(10)), -1))
		case 4:
			_, err := c.conn.Create("/dw/seq/n_", []byte("s"), zk.FlagSequence, acl)
			note("sequential create", err)
		case 5:
			_, err := c.conn.Multi(
				&zk.CreateRequest{Path: fmt.Sprintf("/dw/m%d", rand.IntN(5)), Data: []byte("m"), Acl: acl},
				&zk.SetDataRequest{Path: shared, Data: []byte(fmt.Sprintf("m%d", i)), Version: -1},
			)
			note("multi", err)
		}
		time.Sleep(2 * time.Millisecond) // two ensembles and three proxies share two cores
	}
}

// sameTree compares /dw on both ensembles with the replicator's digest and
// the sequential names under /dw/seq, allowing settle for them to become
// equal (a running replicator re-checks its own copies after its grace).
func sameTree(t *testing.T, a, b *zktest.Ensemble, settle time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ca, err := zkclient.Dial(ctx, a.Addrs(), zkclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close()
	cb, err := zkclient.Dial(ctx, b.Addrs(), zkclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close()
	_ = ca.Sync(ctx, "/dw")
	_ = cb.Sync(ctx, "/dw")
	for deadline := time.Now().Add(settle); ; time.Sleep(200 * time.Millisecond) {
		v, err := replicator.Validate(ctx, replicator.Endpoints{Source: []*zkclient.Conn{ca}, Target: []*zkclient.Conn{cb}}, []string{"/dw"}, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(v) == 1 && v[0].Equal {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/dw differs between A and B: %+v", v)
		}
	}
	sa, _, err := ca.Children(ctx, "/dw/seq")
	if err != nil {
		t.Fatal(err)
	}
	sb, _, err := cb.Children(ctx, "/dw/seq")
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(sa)
	sort.Strings(sb)
	if strings.Join(sa, ",") != strings.Join(sb, ",") || len(sa) == 0 {
		t.Fatalf("sequential names differ: %d on A, %d on B", len(sa), len(sb))
	}
	t.Logf("A and B equal: %d sequential names", len(sa))
}

// TestDualWriteThroughThreeProxies runs three proxy processes in
// two-ensemble mode in front of two real three-server ensembles, with no
// replicator, and six clients writing the same znodes concurrently:
// normally, with one server of B killed, and with all of B stopped for
// 10 s. No client notices B's trouble, the mirror backlog rises and falls,
// and afterwards B equals A (digest and sequential names). Then each
// client's ephemeral is owned on B by its shadow session, a closed
// client's ephemeral goes from both, and a SIGKILLed proxy's clients'
// ephemerals go from both within the session timeout plus a margin.
func TestDualWriteThroughThreeProxies(t *testing.T) {
	dualWriteThroughThreeProxies(t, false)
}

// TestDualWriteThroughThreeProxiesWithReplicator is the same with
// `zk-migrate sync --primary source` running continuously on /dw, as the
// control plane's phase 1 runs it beside the proxies (issue 10 item 5):
// the digests are equal, the replicator's audit log records no conflict,
// and every proxied client's ephemeral on B is still owned by its shadow
// session, not by the replicator.
func TestDualWriteThroughThreeProxiesWithReplicator(t *testing.T) {
	dualWriteThroughThreeProxies(t, true)
}

func dualWriteThroughThreeProxies(t *testing.T, withSync bool) {
	if testing.Short() {
		t.Skip("starts two ZooKeeper ensembles")
	}
	ctx := context.Background()
	name := "dw"
	if withSync {
		name = "dws"
	}
	a, err := zktest.Start(ctx, zktest.Config{Servers: 3, Name: name + "-a"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	b, err := zktest.Start(ctx, zktest.Config{Servers: 3, Name: name + "-b"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	for _, e := range []*zktest.Ensemble{a, b} {
		c, _, err := zk.Connect(e.Addrs(), 10*time.Second, zk.WithLogInfo(false))
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{"/dw", "/dw/seq", "/dw/s0", "/dw/s1", "/dw/s2", "/dw/s3", "/dw/s4"} {
			if _, err := c.Create(p, nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
				t.Fatal(err)
			}
		}
		c.Close()
	}
	var auditLog string
	var syncExited <-chan struct{}
	if withSync {
		auditLog, syncExited = startSyncBeside(t, a, b)
	}
	proxies := []*dualProxy{startDualProxy(t, a, b), startDualProxy(t, a, b), startDualProxy(t, a, b)}

	const timeout = 4 * time.Second
	var clients []*dwClient
	for i, p := range proxies {
		for j := 0; j < 2; j++ {
			c := &dwClient{proxy: p, ephemeral: fmt.Sprintf("/dw/eph-%d-%d", i, j)}
			conn, ev, err := zk.Connect([]string{p.listen}, timeout, zk.WithLogInfo(false))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(conn.Close)
			c.conn = conn
			waitFor(t, func() bool { return conn.State() == zk.StateHasSession })
			go func() {
				for e := range ev {
					if e.State == zk.StateDisconnected || e.State == zk.StateExpired {
						c.noticed.Add(1)
					}
				}
			}()
			if _, err := conn.Create(c.ephemeral, []byte("alive"), zk.FlagEphemeral, zk.WorldACL(zk.PermAll)); err != nil {
				t.Fatal(err)
			}
			clients = append(clients, c)
		}
	}

	stop := make(chan struct{})
	errs := make(chan error, 100)
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.work(t, stop, errs)
		}()
	}
	stopped := false
	stopLoad := func() {
		if !stopped {
			stopped = true
			close(stop)
			wg.Wait()
		}
	}
	defer stopLoad()
	backlog := func() (sum float64) {
		for _, p := range proxies {
			sum += p.metric(t, "zkmigrate_proxy_mirror_backlog")
		}
		return sum
	}
	start := time.Now()
	time.Sleep(4 * time.Second)

	// One server of B dies under load, and comes back.
	if err := b.Kill(2); err != nil {
		t.Fatal(err)
	}
	time.Sleep(4 * time.Second)
	if err := b.Restart(ctx, 2); err != nil {
		t.Fatal(err)
	}

	// All of B stops for 10 s under load.
	for id := 1; id <= 3; id++ {
		_ = b.Kill(id)
	}
	maxBacklog := 0.0
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
		maxBacklog = max(maxBacklog, backlog())
	}
	var rw sync.WaitGroup
	for id := 1; id <= 3; id++ {
		rw.Add(1)
		go func() {
			defer rw.Done()
			if err := b.Restart(ctx, id); err != nil {
				t.Errorf("restart B%d: %v", id, err)
			}
		}()
	}
	rw.Wait()
	time.Sleep(2 * time.Second) // load goes on against a recovering B
	stopLoad()
	t.Logf("load ran %v; mirror backlog peaked at %v paths while B was down", time.Since(start).Round(time.Second), maxBacklog)
	if maxBacklog == 0 {
		t.Error("mirror backlog stayed 0 while B was down")
	}
	lag := func() (most float64) {
		for _, p := range proxies {
			most = max(most, p.metric(t, "zkmigrate_proxy_mirror_lag_seconds"))
		}
		return most
	}
	deadline := time.Now().Add(60 * time.Second)
	for backlog() > 0 || lag() > 0 {
		if time.Now().After(deadline) {
			for _, p := range proxies {
				_ = p.cmd.Process.Signal(syscall.SIGQUIT) // goroutine dump into its log
			}
			time.Sleep(time.Second)
			t.Fatalf("mirror backlog still %v (lag %vs) a minute after B returned", backlog(), lag())
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, c := range clients {
		if n := c.noticed.Load(); n > 0 {
			t.Errorf("client of %s noticed B's trouble %d times", c.proxy.listen, n)
		}
	}
	select {
	case err := <-errs:
		t.Errorf("first unexpected client error: %v", err)
	default:
	}
	settle := time.Duration(0) // the mirror alone: equal once its backlog drained
	if withSync {
		settle = 15 * time.Second // twice the replicator's --mirror-grace, and a margin
	}
	sameTree(t, a, b, settle)
	if withSync {
		select {
		case <-syncExited:
			t.Fatal("zk-migrate sync exited during the load")
		default:
		}
		logged, err := os.ReadFile(auditLog)
		if err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(string(logged), `"action":"conflict"`); n > 0 {
			t.Errorf("the replicator reported %d conflicts for what the proxies mirror:\n%s", n, logged)
		}
	}
	reattached := 0.0
	for _, p := range proxies {
		reattached += p.metric(t, "zkmigrate_proxy_shadow_reattaches_total")
	}
	if reattached == 0 {
		t.Error("no shadow session was re-attached to another server of B")
	}

	// Ephemerals on B belong to the clients' shadow sessions.
	cb, _, err := zk.Connect(b.Addrs(), 10*time.Second, zk.WithLogInfo(false))
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close()
	ca, _, err := zk.Connect(a.Addrs(), 10*time.Second, zk.WithLogInfo(false))
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close()
	for _, c := range clients {
		_, st, err := cb.Get(c.ephemeral)
		if err != nil {
			t.Fatalf("%s on B: %v", c.ephemeral, err)
		}
		if want := c.proxy.shadowOf(t, c.conn.SessionID()); st.EphemeralOwner != want || want == 0 {
			t.Errorf("%s on B owned by 0x%x, want the client's shadow session 0x%x", c.ephemeral, st.EphemeralOwner, want)
		}
	}
	goneFromBoth := func(paths []string, within time.Duration) {
		t.Helper()
		deadline := time.Now().Add(within)
		for _, p := range paths {
			for {
				ea, _, errA := ca.Exists(p)
				eb, _, errB := cb.Exists(p)
				if errA == nil && errB == nil && !ea && !eb {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s still there %v later: on A %v, on B %v", p, within, ea, eb)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
	}
	// A client that closes its session: its ephemeral goes from both.
	clients[0].conn.Close()
	goneFromBoth([]string{clients[0].ephemeral}, 5*time.Second)

	// SIGKILL of a proxy: its clients' ephemerals go from both ensembles
	// within the session timeout plus a margin (ZooKeeper checks expiry
	// every tick, 500 ms here, and the proxy last pinged up to a third of
	// the timeout before it died; we allow 3 s).
	killed := proxies[2]
	_ = killed.cmd.Process.Signal(syscall.SIGKILL)
	t0 := time.Now()
	goneFromBoth([]string{clients[4].ephemeral, clients[5].ephemeral}, timeout+3*time.Second)
	t.Logf("SIGKILLed proxy's ephemerals gone from A and B after %v (timeout %v)", time.Since(t0).Round(100*time.Millisecond), timeout)
	for _, c := range clients[1:4] {
		if ok, _, _ := cb.Exists(c.ephemeral); !ok {
			t.Errorf("%s of a live client vanished from B", c.ephemeral)
		}
	}
}

// startSyncBeside starts `zk-migrate sync --primary source` on /dw, waits
// for its continuous sync to begin, and returns its audit log's path and
// a channel closed when it exits.
func startSyncBeside(t *testing.T, a, b *zktest.Ensemble) (string, <-chan struct{}) {
	t.Helper()
	auditLog := filepath.Join(t.TempDir(), "sync-audit.jsonl")
	out := &syncBuffer{}
	cmd := exec.Command(bin, "sync", "--source", a.ConnectString(), "--target", b.ConnectString(), "--paths", "/dw",
		"--primary", "source", "--metrics-addr", "", "--audit-log", auditLog)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		<-exited
		if t.Failed() {
			t.Logf("zk-migrate sync output:\n%s", out.String())
		}
	})
	waitFor(t, func() bool {
		select {
		case <-exited:
			t.Fatalf("zk-migrate sync exited:\n%s", out.String())
		default:
		}
		return strings.Contains(out.String(), "copied ")
	})
	time.Sleep(time.Second) // its continuous sync watches both sides
	return auditLog, exited
}

// TestRecordedPrimaryWinsOverTheFlag: a two-ensemble proxy that finds a
// control node in the gossip pool advertising the primary it recorded
// uses that one, whatever --primary says, so a proxy restarted with a
// stale flag after a flip never comes back on the wrong side.
func TestRecordedPrimaryWinsOverTheFlag(t *testing.T) {
	ctl, err := membership.Join(membership.Config{Name: "control-test", BindAddr: freeAddr(t), Fast: true,
		Meta: membership.Meta{Role: membership.RoleControl, Primary: ensemble.Target, Epoch: 2}})
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Leave()
	seed := ctl.Members()[0].Addr
	listen, admin := freeAddr(t), freeAddr(t)
	// The ensembles are never dialled: no client connects.
	cmd := exec.Command(bin, "proxy", "--listen", listen, "--source", "127.0.0.1:1", "--target", "127.0.0.1:2",
		"--primary", "source", "--admin-addr", admin, "--metrics-addr", "", "--gossip-addr", freeAddr(t), "--gossip-join", seed, "--gossip-insecure")
	logs := &syncBuffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	var primary string
	waitFor(t, func() bool {
		resp, err := http.Get("http://" + admin + "/admin/v1/sessions")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var body struct{ Primary string }
		_ = json.NewDecoder(resp.Body).Decode(&body)
		primary = body.Primary
		return true
	})
	if primary != "target" {
		t.Fatalf("proxy uses %q as primary, want the recorded target\n%s", primary, logs.String())
	}
	if !strings.Contains(logs.String(), "it wins over --primary") {
		t.Errorf("no log line says the recorded primary overrode the flag:\n%s", logs.String())
	}
}
