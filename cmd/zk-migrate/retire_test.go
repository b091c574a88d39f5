package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/membership"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// TestPhase6RetiresEveryProxyThroughTheCLI: a control node with gossip and
// the proxy token runs a whole migration (actions-less phases) over two
// two-ensemble proxy processes whose clients hold ephemerals. Beside them a
// gossip member claims to be a proxy but never answers (a proxy hung or
// partitioned): phase 6 fails naming it with the remediation, and the
// rollback is refused from then on. Once it leaves the pool (removed from
// the fleet), `retry` completes phase 6: both proxies advertise A retired,
// A's server lists no client session, the clients' ephemerals are gone
// from A and still on B, and the clients go on writing without a
// disconnect or an expiry. A proxy started afterwards, with no record of
// its own, learns the retirement from the control plane's gossip.
func TestPhase6RetiresEveryProxyThroughTheCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two ZooKeeper ensembles, a control node and two proxies")
	}
	ctx := context.Background()
	a, b := startPair(t, ctx, "retire")
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokens, []byte(opToken+" operator bob\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(dir, "flip.token")
	if err := os.WriteFile(tokenFile, []byte("0123456789abcdef-retire-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "migration.yaml")
	if err := os.WriteFile(cfg, []byte("migration:\n  id: prod\n  source_zk: "+a.ConnectString()+"\n  target_zk: "+b.ConnectString()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	api, gossip := freeAddr(t), freeAddr(t)
	ctl := exec.Command(bin, "control", "--id", "c1", "--raft-addr", freeAddr(t), "--api-addr", api, "--bootstrap",
		"--data-dir", filepath.Join(dir, "c1"), "--tokens", tokens, "--raft-stabilization", "500ms",
		"--gossip-addr", gossip, "--gossip-insecure", "--proxy-token-file", tokenFile)
	ctlLog := &syncBuffer{}
	ctl.Stdout, ctl.Stderr = ctlLog, ctlLog
	if err := ctl.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = ctl.Process.Kill()
		_ = ctl.Wait()
		if t.Failed() {
			t.Logf("control log:\n%s", ctlLog.String())
		}
	})
	cli := func(args ...string) string {
		t.Helper()
		out, code := run(t, append(args, "--api", "http://"+api, "--token", opToken)...)
		if code != 0 {
			t.Fatalf("%v: exit %d\n%s", args, code, out)
		}
		return out
	}
	waitFor(t, func() bool {
		out, code := run(t, "status", "--api", "http://"+api, "--token", opToken)
		return code == 0 && strings.Contains(out, "MIGRATION")
	})
	waitFor(t, func() bool {
		c, err := net.DialTimeout("tcp", gossip, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	proxies := []*fenceProxy{
		startFenceProxy(t, "proxy-1", a, b, tokenFile, gossip, "5s"),
		startFenceProxy(t, "proxy-2", a, b, tokenFile, gossip, "5s"),
	}
	var clients []*zk.Conn
	var events []<-chan zk.Event
	for i, p := range proxies {
		c, ev, err := zk.Connect([]string{p.listen}, 6*time.Second, zk.WithLogInfo(false))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Create(fmt.Sprintf("/retire-eph-%d", i), nil, zk.FlagEphemeral, zk.WorldACL(zk.PermAll)); err != nil {
			t.Fatal(err)
		}
		clients, events = append(clients, c), append(events, ev)
	}
	status := func() string { return cli("status") }
	is := func(step, st string) bool {
		for _, line := range strings.Split(status(), "\n") {
			if f := strings.Fields(line); len(f) >= 4 && f[0] == "prod" && f[2] == step && f[3] == st {
				return true
			}
		}
		return false
	}
	waitLong := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(90 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("never: %s\n%s", what, status())
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	// The test's own sessions on A (onA's), which `cons` may still list
	// while the server closes them.
	var ownOnA []string
	onA := func(p string) bool {
		ca, _, err := zk.Connect(a.Addrs(), 10*time.Second, zk.WithLogInfo(false))
		if err != nil {
			t.Fatal(err)
		}
		defer ca.Close()
		ok, _, err := ca.Exists(p)
		ownOnA = append(ownOnA, fmt.Sprintf("sid=0x%x", ca.SessionID()))
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}

	cli("start", "--config", cfg)
	waitLong("phase 1 succeeded", func() bool { return is("1-deploy-b-and-sync", "succeeded") })
	if !onA("/retire-eph-0") || !onA("/retire-eph-1") {
		t.Fatal("the clients' ephemerals are not on A before the flip (the test's premise)")
	}
	cli("advance", "--phase", "flip", "--confirm")
	waitLong("flip succeeded", func() bool { return is("flip", "succeeded") })
	for phase := 2; phase <= 5; phase++ {
		step := map[int]string{2: "2-masters-on-b", 3: "3-masters-off-a", 4: "4-agents-on-b", 5: "5-drain-agents-a"}[phase]
		cli("advance", "--phase", fmt.Sprint(phase), "--confirm")
		waitLong(step+" succeeded", func() bool { return is(step, "succeeded") })
	}

	// A proxy in the pool that never answers (its admin endpoint gone).
	dead := freeAddr(t) // nothing listens there
	ghost, err := membership.Join(membership.Config{Name: "proxy-ghost", BindAddr: freeAddr(t), Fast: true, Seeds: []string{gossip},
		Meta: membership.Meta{Role: membership.RoleProxy, Primary: ensemble.Target, Epoch: 1, API: "http://" + dead}})
	if err != nil {
		t.Fatal(err)
	}
	left := false
	defer func() {
		if !left {
			_ = ghost.Leave()
		}
	}()
	waitFor(t, func() bool {
		for _, m := range membersOf(t, gossip) {
			if m.Name == "proxy-ghost" {
				return true
			}
		}
		return false
	})
	cli("advance", "--phase", "6", "--confirm")
	waitLong("phase 6 failed naming the silent proxy", func() bool { return is("6-remove-a", "failed") })
	out := status()
	if !strings.Contains(out, "proxy-ghost (no answer") || !strings.Contains(out, "remove it from the fleet") ||
		strings.Contains(out, "proxy-1 (") || strings.Contains(out, "proxy-2 (") {
		t.Fatalf("phase 6's failure should name proxy-ghost alone, with the remediation:\n%s", out)
	}
	if out, code := run(t, "rollback", "--to-phase", "5", "--confirm", "--api", "http://"+api, "--token", opToken); code == 0 ||
		!strings.Contains(out, "retired ensemble A") {
		t.Fatalf("rollback after phase 6 asked the proxies to retire A: exit %d\n%s", code, out)
	}

	// Removed from the fleet: phase 6 passes on retry.
	left = true
	if err := ghost.Leave(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		for _, m := range membersOf(t, gossip) {
			if m.Name == "proxy-ghost" {
				return false
			}
		}
		return true
	})
	cli("retry")
	waitLong("migration done", func() bool { return is("done", "completed") })
	waitFor(t, func() bool {
		n := 0
		for _, m := range membersOf(t, gossip) {
			if m.Meta.Role == membership.RoleProxy && m.Meta.Retired == ensemble.Source {
				n++
			}
		}
		return n == len(proxies)
	})
	// The control plane sees it too: no live proxy left that has not
	// retired A.
	waitFor(t, func() bool {
		req, _ := http.NewRequest(http.MethodGet, "http://"+api+"/api/v1/migrations/prod/health", nil)
		req.Header.Set("Authorization", "Bearer "+opToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var h struct {
			Detail struct {
				NotRetired *[]string `json:"proxies_not_retired_a"`
			} `json:"detail"`
		}
		return json.NewDecoder(resp.Body).Decode(&h) == nil && h.Detail.NotRetired != nil && len(*h.Detail.NotRetired) == 0
	})
	cons, err := zkclient.FourLetterWord(a.Addrs()[0], "cons", 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(cons, "sid=0x") {
		t.Fatalf("client sessions left on A after phase 6:\n%s", cons)
	}
	cb, _, err := zk.Connect(b.Addrs(), 10*time.Second, zk.WithLogInfo(false))
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close()
	for i, c := range clients {
		eph := fmt.Sprintf("/retire-eph-%d", i)
		if onA(eph) {
			t.Fatalf("%s still on A after phase 6", eph)
		}
		if ok, _, err := cb.Exists(eph); err != nil || !ok {
			t.Fatalf("%s not on B after phase 6: %v %v", eph, ok, err)
		}
		p := fmt.Sprintf("/after-retire-%d", i)
		if _, err := c.Create(p, nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
			t.Fatalf("write through proxy-%d after phase 6: %v", i+1, err)
		}
		if onA(p) {
			t.Fatalf("%s mirrored to A after phase 6", p)
		}
		for len(events[i]) > 0 {
			if e := <-events[i]; e.State == zk.StateDisconnected || e.State == zk.StateExpired {
				t.Fatalf("client of proxy-%d saw %v", i+1, e.State)
			}
		}
	}

	// A proxy that joins after phase 6 without a --state-dir record (a new
	// host, or a lost disk) learns from the control plane that A is
	// retired: it serves from B and opens nothing on A.
	late := startFenceProxy(t, "proxy-late", a, b, tokenFile, gossip, "5s")
	cl, _, err := zk.Connect([]string{late.listen}, 6*time.Second, zk.WithLogInfo(false))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := cl.Create("/retire-eph-late", nil, zk.FlagEphemeral, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatalf("write through a proxy started after phase 6: %v\n%s", err, late.logs.String())
	}
	if ok, _, err := cb.Exists("/retire-eph-late"); err != nil || !ok {
		t.Fatalf("the late proxy's client's ephemeral is not on B: %v %v", ok, err)
	}
	time.Sleep(500 * time.Millisecond) // a mirror would have run by now
	if onA("/retire-eph-late") {
		t.Fatal("a proxy started after phase 6 mirrored to the retired A")
	}
	if cons, err := zkclient.FourLetterWord(a.Addrs()[0], "cons", 3*time.Second); err != nil || othersSessions(cons, ownOnA) {
		t.Fatalf("a proxy started after phase 6 opened a session on A (%v):\n%s", err, cons)
	}
}

// othersSessions reports whether a `cons` answer lists a session other
// than own (as "sid=0x...").
func othersSessions(cons string, own []string) bool {
	for _, line := range strings.Split(cons, "\n") {
		i := strings.Index(line, "sid=0x")
		if i < 0 {
			continue
		}
		sid := line[i:]
		if j := strings.IndexAny(sid, ",)"); j >= 0 {
			sid = sid[:j]
		}
		if !slices.Contains(own, sid) {
			return true
		}
	}
	return false
}
