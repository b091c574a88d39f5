package membership

import (
	"context"
	"errors"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/zk-migrate/zk-migrate/control"
	"github.com/zk-migrate/zk-migrate/ensemble"
)

// TestFleetTellsARefusalFromSilence: a proxy that answers the hold 503
// (alive, could not hold) is named with its answer in a RefusedError that
// the control plane reads as control.Refusals; a proxy that does not
// answer before the deadline, one whose admin port refuses the
// connection and one a gateway could not reach (502) are neither held
// nor refused (no answer: the barrier fences them).
func TestFleetTellsARefusalFromSilence(t *testing.T) {
	seed := freeAddr(t)
	ctl, err := Join(Config{Name: "control-1", BindAddr: seed, Fast: true, Meta: Meta{Role: RoleControl}})
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Leave()
	serve := func(name string, h http.HandlerFunc) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: h}
		go func() { _ = srv.Serve(ln) }()
		joinAs(t, name, seed, "http://"+ln.Addr().String())
		t.Cleanup(func() { _ = srv.Close() })
	}
	serve("proxy-ok", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte(`{"epoch":0,"primary":"A","budget_ms":3000}`))
	})
	serve("proxy-busy", func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "hold for epoch 1: drain: session 0x1 has requests in flight: context deadline exceeded (nothing held; serving from source)", http.StatusServiceUnavailable)
	})
	serve("proxy-stuck", func(_ http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	serve("proxy-behind-gateway", func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "upstream connect error", http.StatusBadGateway)
	})
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAPI := "http://" + closed.Addr().String()
	closed.Close()
	joinAs(t, "proxy-dead", seed, deadAPI)
	fleet := &Fleet{Agent: ctl}
	all := []string{"proxy-behind-gateway", "proxy-busy", "proxy-dead", "proxy-ok", "proxy-stuck"}
	waitMembers(t, fleet, all)

	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	held, budget, _, err := fleet.Hold(ctx, "m", 1, ensemble.Target, all)
	if !slices.Equal(held, []string{"proxy-ok"}) || budget != 3*time.Second {
		t.Fatalf("held %v budget %v", held, budget)
	}
	var r control.Refusals
	if !errors.As(err, &r) {
		t.Fatalf("no refusals in %v", err)
	}
	got := r.Refused()
	if len(got) != 1 || !strings.HasPrefix(got["proxy-busy"], "503: hold for epoch 1: drain: session 0x1 has requests in flight") {
		t.Fatalf("refused %v; want proxy-busy alone, with its answer", got)
	}
	if !strings.Contains(err.Error(), "hold request refused: proxy-busy answered 503: ") {
		t.Fatalf("error: %v", err)
	}
	// Everyone answering 200: no error.
	if _, _, _, err := fleet.Hold(context.Background(), "m", 1, ensemble.Target, []string{"proxy-ok"}); err != nil {
		t.Fatalf("a hold every proxy did: %v", err)
	}
}

// joinAs joins the pool as a proxy advertising api.
func joinAs(t *testing.T, name, seed, api string) {
	t.Helper()
	a, err := Join(Config{Name: name, BindAddr: freeAddr(t), Seeds: []string{seed}, Fast: true,
		Meta: Meta{Role: RoleProxy, Primary: "A", API: api}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Kill() })
}
