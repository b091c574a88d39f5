package control

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http/httptest"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/faultnet"
	"github.com/zk-migrate/zk-migrate/fence"
	"github.com/zk-migrate/zk-migrate/membership"
	"github.com/zk-migrate/zk-migrate/proxy"
	"github.com/zk-migrate/zk-migrate/proxy/proxytest"
	"github.com/zk-migrate/zk-migrate/zkclient"
	"github.com/zk-migrate/zk-migrate/zktest"
)

// TestBarrierHoldsAgainARealProxyWhoseDrainFailed runs the executor's
// two-phase barrier through membership.Fleet over gossip against a real
// two-ensemble proxy. The proxy's mirror to B is cut (a partitioned hop)
// with a client's write waiting to be mirrored, so its drain cannot
// finish within its pause budget: it answers the first hold 503. The
// control plane holds it again (the cut healed meanwhile) and the flip
// completes with the proxy swapped, not fenced, and the client's next
// write lands on B with no error. Before, the 503 was taken for silence:
// the proxy was recorded fenced and left serving A, whose raised fence
// refused its client's write.
func TestBarrierHoldsAgainARealProxyWhoseDrainFailed(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two ZooKeeper servers")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var a, b *zktest.Ensemble
	var wg sync.WaitGroup
	var errA, errB error
	wg.Add(2)
	go func() { defer wg.Done(); a, errA = zktest.Start(ctx, zktest.Config{Servers: 1, Name: "ctl-a"}) }()
	go func() { defer wg.Done(); b, errB = zktest.Start(ctx, zktest.Config{Servers: 1, Name: "ctl-b"}) }()
	wg.Wait()
	for _, e := range []*zktest.Ensemble{a, b} {
		if e != nil {
			t.Cleanup(e.Close)
		}
	}
	if err := errors.Join(errA, errB); err != nil {
		t.Fatal(err)
	}
	hop, err := faultnet.Listen("127.0.0.1:0", b.Addrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hop.Close() })

	logs := &lockedBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, nil))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs:\n%s", logs.String())
		}
	})
	p, err := proxytest.Start(proxy.Config{Name: "proxy-1", Upstream: a.Addrs(), Secondary: []string{hop.Addr()}, Logger: log.With("who", "proxy")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	const token = "barrier-test-token-0123456789"
	admin := httptest.NewServer(p.FlipHandler(token, nil))
	t.Cleanup(admin.Close)

	// The control plane and the proxy in one gossip pool.
	seed, err := zktest.StableAddr()
	if err != nil {
		t.Fatal(err)
	}
	ctl, err := membership.Join(membership.Config{Name: "control-1", BindAddr: seed, Fast: true, Meta: membership.Meta{Role: membership.RoleControl}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ctl.Leave() })
	pa, err := zktest.StableAddr()
	if err != nil {
		t.Fatal(err)
	}
	member, err := membership.Join(membership.Config{Name: "proxy-1", BindAddr: pa, Seeds: []string{seed}, Fast: true,
		Meta: membership.Meta{Role: membership.RoleProxy, Primary: "A", API: admin.URL}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = member.Kill() })
	fl := &watchedFleet{Fleet: &membership.Fleet{Agent: ctl, Token: token}, refused: make(chan string, 16)}
	waitFor(t, "the proxy in the gossip pool", func() bool {
		live, _ := fl.Live(ctx)
		return slices.Equal(live, []string{"proxy-1"})
	})

	// A client with 9 s sessions (a 3 s pause budget) writes through the
	// proxy while the proxy cannot reach B: the write is on A, its mirror
	// waits.
	c, _, err := zk.Connect([]string{p.Addr}, 9*time.Second, zk.WithLogInfo(false))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if _, err := c.Create("/x", []byte("0"), 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	cb := direct(t, b)
	waitFor(t, "the mirror to B", func() bool {
		ok, _, err := cb.Exists("/x")
		return p.MirrorBacklog() == 0 && err == nil && ok
	})
	hop.Partition(true)
	if _, err := c.Set("/x", []byte("1"), -1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the write waiting to be mirrored", func() bool { return p.MirrorBacklog() > 0 })

	pr := &localProposer{s: NewState()}
	if err := op(pr, CmdCreate, 0); err != nil {
		t.Fatal(err)
	}
	for _, c := range []Command{{Kind: CmdStart}, {Kind: CmdStepSucceeded, Step: StepDeployB}} {
		c.Migration, c.By, c.Time = "m", "test", time.Now().UTC()
		if err := pr.Apply(ctx, c); err != nil {
			t.Fatalf("%s: %v", c.Kind, err)
		}
	}
	e := &Executor{P: pr, Fleet: fl, Fencer: &zkFencer{a: a.Addrs(), b: b.Addrs()}, Interval: 20 * time.Millisecond,
		FlipTimeout: 10 * time.Second, Logger: log.With("who", "control"), Name: "test"}
	ectx, ecancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { _ = e.Run(ectx); close(done) }()
	t.Cleanup(func() { ecancel(); <-done })
	if err := op(pr, CmdAdvance, StepFlip); err != nil {
		t.Fatal(err)
	}
	select {
	case why := <-fl.refused:
		if !strings.Contains(why, "503") || !strings.Contains(why, "being mirrored") {
			t.Fatalf("the proxy refused the hold with %q, want 503 for its drain", why)
		}
		t.Logf("the proxy refused the first hold: %s", why)
	case <-time.After(time.Minute):
		t.Fatalf("the proxy never refused a hold; migration %+v", pr.State().Migrations["m"])
	}
	hop.Partition(false)

	deadline := time.Now().Add(time.Minute)
	m := pr.State().Migrations["m"]
	for m.Status != StatusSucceeded && m.Status != StatusFailed {
		if time.Now().After(deadline) {
			t.Fatalf("the flip did not end: %+v %+v", m, m.Flip)
		}
		time.Sleep(20 * time.Millisecond)
		m = pr.State().Migrations["m"]
	}
	if m.Status != StatusSucceeded || m.Primary != "B" || !slices.Equal(m.Flip.Acked, []string{"proxy-1"}) || len(m.Flip.Fenced) != 0 {
		t.Fatalf("after the flip: %+v %+v", m, m.Flip)
	}
	if ep, primary := p.Epoch(); ep != 1 || primary != ensemble.Target {
		t.Fatalf("the proxy serves epoch %d from %s, want 1 from B", ep, primary)
	}
	// Its client writes on B, with no error.
	if _, err := c.Set("/x", []byte("2"), -1); err != nil {
		t.Fatalf("a write through the proxy after the flip: %v", err)
	}
	_, _ = cb.Sync("/x")
	if d, _, err := cb.Get("/x"); err != nil || string(d) != "2" {
		t.Fatalf("B holds %q (%v), want the write made after the flip", d, err)
	}
}

// watchedFleet is membership.Fleet that reports each proxy refusing a hold.
type watchedFleet struct {
	*membership.Fleet
	refused chan string
}

func (w *watchedFleet) Hold(ctx context.Context, migration string, epoch int64, primary ensemble.Name, proxies []string) ([]string, time.Duration, map[string]fence.Marker, error) {
	held, budget, markers, err := w.Fleet.Hold(ctx, migration, epoch, primary, proxies)
	var r *membership.RefusedError
	if !errors.As(err, &r) {
		return held, budget, markers, err
	}
	for _, why := range r.Reasons {
		select {
		case w.refused <- why:
		default:
		}
	}
	return held, budget, markers, err
}

// zkFencer raises the fences of ensembles a and b as the control node's
// Syncer does: the old primary's on the condition of the hold markers.
type zkFencer struct{ a, b []string }

func (f *zkFencer) Fence(ctx context.Context, _ *Migration, epoch int64, primary ensemble.Name, markers map[string]fence.Marker) ([]string, error) {
	proxies := make([]string, 0, len(markers))
	for p := range markers {
		proxies = append(proxies, p)
	}
	sort.Strings(proxies)
	held := make([]fence.Marker, len(proxies))
	for i, p := range proxies {
		held[i] = markers[p]
	}
	old, cur := f.a, f.b
	if primary == ensemble.Source {
		old, cur = f.b, f.a
	}
	for i, addrs := range [][]string{old, cur} {
		zc, err := zkclient.Dial(ctx, addrs, zkclient.Options{})
		if err != nil {
			return nil, err
		}
		var gone []int
		if i == 0 {
			_, gone, err = fence.RaiseIf(ctx, zc, fence.Path, epoch, primary, held)
		} else {
			_, err = fence.Raise(ctx, zc, fence.Path, epoch, primary)
		}
		_ = zc.Close()
		if err != nil {
			return nil, err
		}
		if len(gone) > 0 {
			var lapsed []string
			for _, g := range gone {
				lapsed = append(lapsed, proxies[g])
			}
			return lapsed, nil
		}
	}
	return nil, nil
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// waitFor waits up to a minute for cond (generous: a loaded machine).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func direct(t *testing.T, e *zktest.Ensemble) *zk.Conn {
	t.Helper()
	c, _, err := zk.Connect(e.Addrs(), 10*time.Second, zk.WithLogInfo(false))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// Announce and Withdraw make zkFencer an Announcer, as the control node's
// Syncer: the barrier's announcement on the old primary.
func (f *zkFencer) Announce(ctx context.Context, _ *Migration, epoch int64, primary ensemble.Name) error {
	return f.onOld(ctx, primary, func(c *zkclient.Conn) error {
		_, err := fence.Announce(ctx, c, fence.Path, epoch, primary)
		return err
	})
}

func (f *zkFencer) Withdraw(ctx context.Context, _ *Migration, epoch int64, primary ensemble.Name) error {
	return f.onOld(ctx, primary, func(c *zkclient.Conn) error { return fence.Withdraw(ctx, c, fence.Path, epoch) })
}

func (f *zkFencer) onOld(ctx context.Context, primary ensemble.Name, do func(*zkclient.Conn) error) error {
	old := f.a
	if primary == ensemble.Source {
		old = f.b
	}
	zc, err := zkclient.Dial(ctx, old, zkclient.Options{})
	if err != nil {
		return err
	}
	defer func() { _ = zc.Close() }()
	return do(zc)
}
