package server

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/zk-migrate/zk-migrate/zktest"
)

// TestDashboardPageNeedsNoTokenAndKeepsToItsOrigin: the page and its files
// are served without a token, with a policy that runs only the node's own
// script, allows no framing and sends no referrer; a path outside them is
// 404; the page carries no token and sets no cookie.
func TestDashboardPageNeedsNoTokenAndKeepsToItsOrigin(t *testing.T) {
	base := startAPI(t)
	for path, ctype := range map[string]string{"/": "text/html", "/ui/app.js": "text/javascript", "/ui/app.css": "text/css"} {
		r := call(t, "GET", base+path, "", "")
		b, _ := io.ReadAll(r.Body)
		r.Body.Close()
		if r.StatusCode != http.StatusOK || !strings.HasPrefix(r.Header.Get("Content-Type"), ctype) {
			t.Fatalf("GET %s: %s %q", path, r.Status, r.Header.Get("Content-Type"))
		}
		csp := r.Header.Get("Content-Security-Policy")
		for _, want := range []string{"script-src 'self'", "frame-ancestors 'none'", "connect-src 'self'"} {
			if !strings.Contains(csp, want) {
				t.Fatalf("GET %s: policy %q lacks %q", path, csp, want)
			}
		}
		if r.Header.Get("Set-Cookie") != "" || r.Header.Get("Referrer-Policy") != "no-referrer" {
			t.Fatalf("GET %s: cookie %q, referrer policy %q", path, r.Header.Get("Set-Cookie"), r.Header.Get("Referrer-Policy"))
		}
		if path == "/" && (!strings.Contains(string(b), `src="/ui/app.js"`) || strings.Contains(string(b), "<script>")) {
			t.Fatalf("page: want the script from /ui/app.js and no inline script:\n%s", b)
		}
	}
	for _, path := range []string{"/ui/nope.js", "/ui/index.go", "/nope", "/ui/..%2fdashboard.go"} {
		if r := call(t, "GET", base+path, "", ""); r.StatusCode != http.StatusNotFound {
			t.Fatalf("GET %s: %s, want 404", path, r.Status)
		}
	}
}

// TestDashboardEndpointsFollowTheRoles: whoami names the token's role (the
// page shows an operator's buttons from it), the dashboard's reads need a
// token like every read, and a viewer's press of a button the page would
// not show is refused 403 by the API.
func TestDashboardEndpointsFollowTheRoles(t *testing.T) {
	base := startAPI(t)
	for tok, want := range map[string]string{opTok: `"role": "operator"`, viewerTok: `"role": "viewer"`} {
		r := call(t, "GET", base+"/api/v1/whoami", tok, "")
		b, _ := io.ReadAll(r.Body)
		if r.StatusCode != http.StatusOK || !strings.Contains(string(b), want) {
			t.Fatalf("whoami: %s %s, want %s", r.Status, b, want)
		}
	}
	if r := call(t, "POST", base+"/api/v1/migrations", opTok, yamlCfg); r.StatusCode != http.StatusCreated {
		t.Fatalf("create: %s", r.Status)
	}
	for _, path := range []string{"/api/v1/whoami", "/api/v1/proxies", "/api/v1/migrations/m1/ensembles", "/api/v1/migrations/m1/tasks"} {
		if r := call(t, "GET", base+path, "", ""); r.StatusCode != http.StatusUnauthorized {
			t.Fatalf("GET %s without a token: %s", path, r.Status)
		}
		if r := call(t, "GET", base+path, "not-a-known-token-at-all", ""); r.StatusCode != http.StatusUnauthorized {
			t.Fatalf("GET %s with an unknown token: %s", path, r.Status)
		}
	}
	for _, path := range []string{"/api/v1/migrations/nope/ensembles", "/api/v1/migrations/nope/tasks"} {
		if r := call(t, "GET", base+path, viewerTok, ""); r.StatusCode != http.StatusNotFound {
			t.Fatalf("GET %s: %s, want 404", path, r.Status)
		}
	}
	var tasks TaskCounts
	r := call(t, "GET", base+"/api/v1/migrations/m1/tasks", viewerTok, "")
	if err := json.NewDecoder(r.Body).Decode(&tasks); err != nil || tasks.Mesos {
		t.Fatalf("tasks without a mesos section: %v %+v", err, tasks)
	}
	var px map[string]any
	r = call(t, "GET", base+"/api/v1/proxies", viewerTok, "")
	if err := json.NewDecoder(r.Body).Decode(&px); err != nil || px["gossip"] != false {
		t.Fatalf("proxies without gossip: %v %v", err, px)
	}
	if r := call(t, "POST", base+"/api/v1/migrations/m1/start", viewerTok, ""); r.StatusCode != http.StatusForbidden {
		t.Fatalf("viewer start: %s", r.Status)
	}
}

// TestEnsemblesShowEachServer: GET .../ensembles reads every server of both
// sides now: a three-server A shows one leader, two followers and their
// zxids; with one of A's servers killed it still has quorum and names the
// dead server; B, where nothing listens, has no quorum.
func TestEnsemblesShowEachServer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts ZooKeeper")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, err := zktest.Start(ctx, zktest.Config{Servers: 3, Name: "dash-a"})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	dead := freeAddrT(t)
	base := startAPI(t)
	cfg := "migration: {id: m1, source_zk: \"" + a.ConnectString() + "\", target_zk: \"" + dead + "\"}\n"
	if r := call(t, "POST", base+"/api/v1/migrations", opTok, cfg); r.StatusCode != http.StatusCreated {
		t.Fatalf("create: %s", r.Status)
	}
	read := func() []EnsembleView {
		var out []EnsembleView
		r := call(t, "GET", base+"/api/v1/migrations/m1/ensembles", viewerTok, "")
		defer r.Body.Close()
		if err := json.NewDecoder(r.Body).Decode(&out); err != nil || len(out) != 2 {
			t.Fatalf("ensembles: %s %v %+v", r.Status, err, out)
		}
		return out
	}
	out := read()
	ea, eb := out[0], out[1]
	modes := map[string]int{}
	for _, s := range ea.Servers {
		modes[s.Mode]++
		if !strings.HasPrefix(s.Zxid, "0x") || s.Version == "" {
			t.Fatalf("server %+v: want a zxid and a version", s)
		}
	}
	if ea.Side != "A" || !ea.Primary || !ea.Quorum || ea.Serving != 3 || modes["leader"] != 1 || modes["follower"] != 2 || ea.Leader == "" {
		t.Fatalf("A: %+v", ea)
	}
	if eb.Side != "B" || eb.Primary || eb.Quorum || eb.Serving != 0 || eb.Servers[0].Error == "" {
		t.Fatalf("B: %+v", eb)
	}
	var follower int
	for i, s := range ea.Servers {
		if s.Mode == "follower" {
			follower = i + 1
			break
		}
	}
	if err := a.Kill(follower); err != nil {
		t.Fatal(err)
	}
	ea = read()[0]
	if !ea.Quorum || ea.Serving != 2 || ea.Servers[follower-1].Serving || ea.Servers[follower-1].Error == "" {
		t.Fatalf("A with server %d killed: %+v", follower, ea)
	}
}

// TestTaskCountsPerSide: with an emulated Mesos cluster on A (real
// mesos-sim masters, agents and a framework), the task counts put every
// running task on A's agents and none on B's.
func TestTaskCountsPerSide(t *testing.T) {
	if testing.Short() {
		t.Skip("starts ZooKeeper and Mesos emulator processes")
	}
	e := newMesosEnv(t, 4)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got, err := countTasks(ctx, e.cfg.Mesos)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Mesos || got.Active["A"] < 4 || got.Active["B"] != 0 || got.Active["other"] != 0 || got.Agents["A"] != 2 || got.Leader == "" {
		t.Fatalf("task counts: %+v", got)
	}
}

// freeAddrT returns a loopback address nothing listens on.
func freeAddrT(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
