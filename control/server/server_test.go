package server

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/zk-migrate/zk-migrate/raftstore"
	"github.com/zk-migrate/zk-migrate/zktest"
)

const (
	opTok     = "operator-token-abcdefgh"
	viewerTok = "viewer-token-abcdefghij"
)

func startAPI(t *testing.T) string {
	t.Helper()
	raftAddr, err := zktest.StableAddr()
	if err != nil {
		t.Fatal(err)
	}
	n, err := raftstore.Open(raftstore.Config{ID: "solo", Dir: t.TempDir(), BindAddr: raftAddr, Bootstrap: true,
		HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond, LeaderLeaseTimeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	for !n.IsLeader() {
		time.Sleep(10 * time.Millisecond)
	}
	srv := &Server{Node: n, Tokens: map[string]Identity{opTok: {"olga", RoleOperator}, viewerTok: {"vic", RoleViewer}}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: srv.Handler()}
	go func() { _ = hs.Serve(ln) }()
	t.Cleanup(func() { hs.Close() })
	return "http://" + ln.Addr().String()
}

func call(t *testing.T, method, url, token, body string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

const yamlCfg = `
migration: {id: m1, source_zk: "127.0.0.1:2181", target_zk: "127.0.0.1:2182"}
`

// TestAPIRolesAndEventStream: no token is 401, a viewer changing is 403,
// a bad config is 400 naming the field, and the audit stream delivers each
// change, and the refused one, as a server-sent event naming who made it.
func TestAPIRolesAndEventStream(t *testing.T) {
	base := startAPI(t)
	if r := call(t, "GET", base+"/api/v1/migrations", "", ""); r.StatusCode != http.StatusUnauthorized {
		t.Fatalf("no token: %s", r.Status)
	}
	if r := call(t, "POST", base+"/api/v1/migrations", viewerTok, yamlCfg); r.StatusCode != http.StatusForbidden {
		t.Fatalf("viewer create: %s", r.Status)
	}
	r := call(t, "POST", base+"/api/v1/migrations", opTok, "migration: {id: m1, source_zk: nope}\n")
	b := make([]byte, 4096)
	n, _ := r.Body.Read(b)
	if r.StatusCode != http.StatusBadRequest || !strings.Contains(string(b[:n]), "migration.source_zk") {
		t.Fatalf("bad config: %s %s", r.Status, b[:n])
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", base+"/api/v1/events?after=0", nil)
	req.Header.Set("Authorization", "Bearer "+viewerTok)
	stream, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Body.Close()
	if ct := stream.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	if r := call(t, "POST", base+"/api/v1/migrations", opTok, yamlCfg); r.StatusCode != http.StatusCreated {
		t.Fatalf("create: %s", r.Status)
	}
	if r := call(t, "POST", base+"/api/v1/migrations/m1/advance", opTok, `{"phase":"2","confirm":true}`); r.StatusCode != http.StatusConflict {
		t.Fatalf("advance before start: %s", r.Status)
	}
	sc := bufio.NewScanner(stream.Body)
	var got []string
	for sc.Scan() && len(got) < 3 {
		if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			got = append(got, d)
		}
	}
	if len(got) != 3 || !strings.Contains(got[0], `"action":"refused"`) || !strings.Contains(got[0], `"by":"vic"`) ||
		!strings.Contains(got[1], `"action":"create"`) || !strings.Contains(got[1], `"by":"olga"`) ||
		!strings.Contains(got[2], `"action":"advance"`) || !strings.Contains(got[2], "not allowed now") {
		t.Fatalf("events: %v", got)
	}
}
