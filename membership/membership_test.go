package membership

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/zk-migrate/zk-migrate/control"
	"github.com/zk-migrate/zk-migrate/zktest"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	addr, err := zktest.StableAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// proxyDouble speaks the proxy side of the flip protocol: it joins the
// pool as a proxy and answers flip requests, then advertises the new epoch
// and primary. A stuck double never answers.
type proxyDouble struct {
	agent *Agent
	srv   *http.Server
	mu    sync.Mutex
	flips []FlipRequest
}

func startProxyDouble(t *testing.T, name, seed string, stuck bool) *proxyDouble {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxyDouble{}
	p.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req FlipRequest
		if r.URL.Path != FlipPath || json.NewDecoder(r.Body).Decode(&req) != nil {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		if stuck {
			<-r.Context().Done()
			return
		}
		p.mu.Lock()
		p.flips = append(p.flips, req)
		p.mu.Unlock()
		_ = p.agent.SetMeta(func(m *Meta) { m.Epoch, m.Primary = req.Epoch, req.Primary })
		w.WriteHeader(http.StatusOK)
	})}
	go func() { _ = p.srv.Serve(ln) }()
	p.agent, err = Join(Config{Name: name, BindAddr: freeAddr(t), Seeds: []string{seed}, Fast: true,
		Meta: Meta{Role: RoleProxy, Primary: "A", API: "http://" + ln.Addr().String()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.agent.Kill(); _ = p.srv.Close() })
	return p
}

func waitMembers(t *testing.T, f *Fleet, want []string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		live, _ := f.Live(context.Background())
		if slices.Equal(live, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("live proxies %v, want %v", live, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// localProposer applies commands to an in-memory state (a one-node leader).
type localProposer struct {
	mu sync.Mutex
	s  *control.State
}

func (p *localProposer) Apply(_ context.Context, c control.Command) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.s.Apply(c, uint64(len(p.s.Audit)+1))
}

func (p *localProposer) State() *control.State {
	p.mu.Lock()
	defer p.mu.Unlock()
	b, _ := json.Marshal(p.s)
	st := control.NewState()
	_ = json.Unmarshal(b, st)
	return st
}

func (p *localProposer) IsLeader() bool { return true }

// TestFlipBarrierOverGossip: the control plane sees the proxies through
// gossip, the flip reaches them over their admin endpoint, a stuck proxy is
// fenced, the acknowledged ones advertise the new epoch, and a crashed
// proxy leaves the live set within seconds.
func TestFlipBarrierOverGossip(t *testing.T) {
	seed := freeAddr(t)
	ctl, err := Join(Config{Name: "control-1", BindAddr: seed, Fast: true, Meta: Meta{Role: RoleControl}})
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Leave()
	good1 := startProxyDouble(t, "proxy-master1", seed, false)
	good2 := startProxyDouble(t, "proxy-agent1", seed, false)
	startProxyDouble(t, "proxy-stuck", seed, true)
	fleet := &Fleet{Agent: ctl}
	waitMembers(t, fleet, []string{"proxy-agent1", "proxy-master1", "proxy-stuck"})

	p := &localProposer{s: control.NewState()}
	now := time.Now().UTC()
	for _, c := range []control.Command{
		{Kind: control.CmdCreate, Migration: "m", Config: &control.MigrationConfig{}, Time: now},
		{Kind: control.CmdStart, Migration: "m", Time: now},
		{Kind: control.CmdStepSucceeded, Migration: "m", Step: control.StepDeployB, Time: now},
		{Kind: control.CmdAdvance, Migration: "m", Step: control.StepFlip, Time: now},
	} {
		if err := p.Apply(context.Background(), c); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ex := &control.Executor{P: p, Fleet: fleet, Steps: map[control.Step]control.StepRunner{}, Interval: 10 * time.Millisecond, FlipTimeout: 500 * time.Millisecond, Name: "t"}
	go func() { _ = ex.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		m := p.State().Migrations["m"]
		if m.Status == control.StatusSucceeded {
			if !slices.Equal(m.Flip.Acked, []string{"proxy-agent1", "proxy-master1"}) || !slices.Equal(m.Flip.Fenced, []string{"proxy-stuck"}) || m.Primary != "B" {
				t.Fatalf("flip: %+v primary %s", m.Flip, m.Primary)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("flip did not complete: %+v", m)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, d := range []*proxyDouble{good1, good2} {
		d.mu.Lock()
		if len(d.flips) != 1 || d.flips[0].Epoch != 1 || d.flips[0].Primary != "B" {
			t.Fatalf("proxy got %+v", d.flips)
		}
		d.mu.Unlock()
	}
	// The acknowledged proxies advertise epoch 1; the stuck one is stale.
	deadline = time.Now().Add(10 * time.Second)
	for {
		stale := fleet.Stale(1)
		if len(stale) == 1 && stale[0] == "proxy-stuck (epoch 0)" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stale proxies: %v", stale)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// A crashed proxy leaves the live set within seconds.
	_ = good2.agent.Kill()
	waitMembers(t, fleet, []string{"proxy-master1", "proxy-stuck"})
}

// TestJoinWaitsForASeedNotUpYet: members start in any order; a seed that
// refuses the connection for a while is asked again, and the member
// joins once it is up.
func TestJoinWaitsForASeedNotUpYet(t *testing.T) {
	seed := freeAddr(t)
	started := make(chan *Agent, 1)
	go func() {
		time.Sleep(700 * time.Millisecond)
		a, err := Join(Config{Name: "control-late", BindAddr: seed, Fast: true, Meta: Meta{Role: RoleControl}})
		if err != nil {
			t.Error(err)
		}
		started <- a
	}()
	p, err := Join(Config{Name: "proxy-early", BindAddr: freeAddr(t), Seeds: []string{seed}, Fast: true, Meta: Meta{Role: RoleProxy}})
	if err != nil {
		t.Fatalf("join before the seed was up: %v", err)
	}
	defer p.Leave()
	if ctl := <-started; ctl != nil {
		defer ctl.Leave()
		waitMembers(t, &Fleet{Agent: ctl}, []string{"proxy-early"})
	}
}
