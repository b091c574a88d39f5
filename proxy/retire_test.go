package proxy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/membership"
	"github.com/zk-migrate/zk-migrate/proxy"
	"github.com/zk-migrate/zk-migrate/proxy/proxytest"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// postRetire sends phase 6's retire request as the control plane does and
// returns the status code and the reply.
func postRetire(t *testing.T, url, token string, old ensemble.Name) (int, membership.RetireReply, string) {
	t.Helper()
	body, _ := json.Marshal(membership.RetireRequest{Migration: "m", Ensemble: old})
	req, _ := http.NewRequest(http.MethodPost, url+membership.RetirePath, bytes.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	var r membership.RetireReply
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(b.Bytes(), &r); err != nil {
			t.Fatalf("retire reply %q: %v", b.String(), err)
		}
	}
	return resp.StatusCode, r, b.String()
}

func retireEndpoint(t *testing.T, p *proxytest.Proxy) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle(membership.RetirePath, p.RetireHandler(flipToken, nil))
	hs := httptest.NewServer(mux)
	t.Cleanup(hs.Close)
	return hs.URL
}

// sessionOnA reports whether a server of the primary test ensemble (A)
// lists session id among its connections (cons).
func sessionOnA(t *testing.T, id int64) bool {
	t.Helper()
	want := fmt.Sprintf("sid=0x%x,", id)
	for _, addr := range ens.Addrs() {
		out, err := zkclient.FourLetterWord(addr, "cons", 3*time.Second)
		if err != nil {
			t.Fatalf("cons on %s: %v", addr, err)
		}
		if strings.Contains(out, want) {
			return true
		}
	}
	return false
}

// noSessionTrouble fails the test if the client saw its connection drop
// or its session expire.
func noSessionTrouble(t *testing.T, ev <-chan zk.Event, what string) {
	t.Helper()
	for {
		select {
		case e := <-ev:
			if e.State == zk.StateExpired || e.State == zk.StateDisconnected {
				t.Fatalf("%s: the client saw %v", what, e.State)
			}
		default:
			return
		}
	}
}

// TestRetireClosesShadowsOnAAndSurvivesRestart is phase 6 on one proxy:
// after the flip to B, retiring A closes the client's session kept on A
// (its ephemeral goes from A, stays on B), the client goes on working on B
// without a disconnect or an expiry, nothing more is mirrored to A, a flip
// back to A is refused, and a proxy restarted with the same --state-dir
// keeps A retired (no shadow reopened there; refusing to start with A as
// primary).
func TestRetireClosesShadowsOnAAndSurvivesRestart(t *testing.T) {
	root := testRoot(t)
	b := secondary(t)
	cb, _ := connect(t, b.Addrs(), 10*time.Second)
	if _, err := cb.Create(root, nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	ca := directConn(t)
	dir := t.TempDir()
	p1, err := proxytest.Start(proxy.Config{FencePath: testFence(t), Upstream: ens.Addrs(), Secondary: b.Addrs(), StateDir: dir, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	url := retireEndpoint(t, p1)
	c, ev := connect(t, []string{p1.Addr}, 4*time.Second)
	if _, err := c.Create(root+"/eph", nil, zk.FlagEphemeral, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	waitMirrored(t, p1)

	// Refused while A serves the clients: the reason and the fix.
	if code, _, body := postRetire(t, url, flipToken, ensemble.Source); code != http.StatusConflict || !strings.Contains(body, "flip to target first") {
		t.Fatalf("retire A while A is primary: %d %q, want 409 naming the fix", code, body)
	}
	if code, _, _ := postRetire(t, url, "wrong", ensemble.Source); code != http.StatusUnauthorized {
		t.Fatalf("retire without the token: %d, want 401", code)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := p1.Flip(ctx, 1, ensemble.Target); err != nil {
		t.Fatal(err)
	}
	// Since the flip B serves the client; its session on A is the shadow.
	// The shadow takes the old serving session over on a connection of
	// its own once the flip is done with it (4.10): until then `cons`
	// may list it nowhere.
	id := c.SessionID()
	for until := time.Now().Add(10 * time.Second); !sessionOnA(t, id) && time.Now().Before(until); {
		time.Sleep(50 * time.Millisecond)
	}
	if !sessionOnA(t, id) {
		t.Fatalf("session 0x%x not on A after the flip (the test's premise)", id)
	}
	_, stB, err := cb.Get(root + "/eph")
	if err != nil {
		t.Fatal(err)
	}
	if ok, _, _ := ca.Exists(root + "/eph"); !ok {
		t.Fatal("the ephemeral is not on A before the retirement (the test's premise)")
	}
	noSessionTrouble(t, ev, "flip")

	// The client writes without a pause while its proxy retires A: every
	// write must succeed.
	if _, err := c.Create(root+"/load", nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	stop, loadDone := make(chan struct{}), make(chan error, 1)
	writes := 0
	go func() {
		for {
			select {
			case <-stop:
				loadDone <- nil
				return
			default:
			}
			if _, err := c.Set(root+"/load", []byte("x"), -1); err != nil {
				loadDone <- err
				return
			}
			writes++
		}
	}()
	time.Sleep(50 * time.Millisecond)
	code, reply, body := postRetire(t, url, flipToken, ensemble.Source)
	time.Sleep(50 * time.Millisecond)
	close(stop)
	if err := <-loadDone; err != nil {
		t.Fatalf("a write while the proxy retired A failed: %v", err)
	}
	if code != http.StatusOK || reply.Retired != ensemble.Source || reply.Closed != 1 {
		t.Fatalf("retire A: %d %q, want 200 retired A closed 1", code, body)
	}
	if writes == 0 {
		t.Fatal("no write while the proxy retired A")
	}
	if sessionOnA(t, id) {
		t.Fatalf("session 0x%x still on A after the retirement", id)
	}
	if ok, _, _ := ca.Exists(root + "/eph"); ok {
		t.Fatal("the client's ephemeral is still on A after its shadow session was closed")
	}
	if _, st, err := cb.Get(root + "/eph"); err != nil || st.EphemeralOwner != stB.EphemeralOwner {
		t.Fatalf("ephemeral on B after the retirement: %v owner 0x%x, want 0x%x", err, st.EphemeralOwner, stB.EphemeralOwner)
	}
	if _, ok := p1.ShadowSession(id); ok {
		t.Fatal("the proxy still lists a shadow session")
	}
	// Idempotent: asked again by a new control leader.
	if code, reply, body := postRetire(t, url, flipToken, ensemble.Source); code != http.StatusOK || reply.Closed != 0 {
		t.Fatalf("retire A again: %d %q, want 200 closed 0", code, body)
	}
	// The client goes on, on B only.
	if _, err := c.Create(root+"/after", []byte("x"), 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatalf("write after the retirement: %v", err)
	}
	if _, err := c.Set(root+"/after", []byte("y"), 0); err != nil {
		t.Fatalf("conditional write after the retirement: %v", err)
	}
	if ok, _, _ := cb.Exists(root + "/after"); !ok {
		t.Fatal("a write after the retirement is not on B")
	}
	if p1.MirrorBacklog() != 0 {
		t.Fatalf("mirror backlog %d after the retirement", p1.MirrorBacklog())
	}
	if ok, _, _ := ca.Exists(root + "/after"); ok {
		t.Fatal("a write after the retirement was mirrored to A")
	}
	noSessionTrouble(t, ev, "retirement")
	if err := p1.Flip(ctx, 2, ensemble.Source); !errors.Is(err, proxy.ErrRetired) {
		t.Fatalf("flip back to A after the retirement: %v, want ErrRetired", err)
	}

	// A restart with the same state directory keeps A retired.
	p1.Close()
	if _, err := proxy.New(proxy.Config{FencePath: testFence(t), Upstream: ens.Addrs(), Secondary: b.Addrs(), StateDir: dir, Logger: testLogger(t)}); err == nil ||
		!strings.Contains(err.Error(), "--primary target") {
		t.Fatalf("start with A as primary after A was retired: %v, want a refusal naming --primary target", err)
	}
	p2, err := proxytest.StartOn(p1.Addr, proxy.Config{FencePath: testFence(t), Upstream: b.Addrs(), Secondary: ens.Addrs(), PrimaryName: ensemble.Target,
		Epoch: 1, StateDir: dir, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p2.Close)
	if p2.Retired() != ensemble.Source {
		t.Fatalf("restarted proxy: retired %q, want A", p2.Retired())
	}
	deadline := time.After(10 * time.Second)
	for disconnected := false; !disconnected || c.State() != zk.StateHasSession; {
		select {
		case e := <-ev:
			if e.State == zk.StateExpired {
				t.Fatal("the client's session expired after the proxy restarted")
			}
			if e.State == zk.StateDisconnected {
				disconnected = true
			}
		case <-deadline:
			t.Fatalf("client not back through the restarted proxy (state %v)", c.State())
		}
	}
	if _, err := c.Create(root+"/eph2", nil, zk.FlagEphemeral, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatalf("write after the restart: %v", err)
	}
	c2, _ := connect(t, []string{p2.Addr}, 4*time.Second)
	if _, err := c2.Create(root+"/eph3", nil, zk.FlagEphemeral, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatalf("new session after the restart: %v", err)
	}
	time.Sleep(500 * time.Millisecond) // a mirror would have copied them by now (it follows within milliseconds)
	for _, s := range []int64{c.SessionID(), c2.SessionID()} {
		if _, ok := p2.ShadowSession(s); ok {
			t.Fatalf("the restarted proxy opened a shadow session for 0x%x on the retired ensemble", s)
		}
	}
	for _, pth := range []string{root + "/eph2", root + "/eph3"} {
		if ok, _, _ := ca.Exists(pth); ok {
			t.Fatalf("%s mirrored to the retired ensemble after the restart", pth)
		}
		if ok, _, _ := cb.Exists(pth); !ok {
			t.Fatalf("%s not on B", pth)
		}
	}
	if sessionOnA(t, c.SessionID()) {
		t.Fatal("the client's session is back on A after the restart")
	}
}
