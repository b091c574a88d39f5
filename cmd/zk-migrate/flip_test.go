package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/membership"
	"github.com/zk-migrate/zk-migrate/zktest"
)

// TestProxyFlipsThroughTheFleet: a proxy process advertises its admin
// endpoint in gossip; the control plane's Fleet finds it there and flips it
// only with the token of --admin-token-file. The proxy's client keeps its
// session, its ephemeral is on B afterwards, and its writes go to B; the
// proxy then advertises the new epoch.
func TestProxyFlipsThroughTheFleet(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two ZooKeeper ensembles")
	}
	ctx := context.Background()
	a, err := zktest.Start(ctx, zktest.Config{Servers: 1, Name: "flip-a"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	b, err := zktest.Start(ctx, zktest.Config{Servers: 1, Name: "flip-b"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	tokenFile := filepath.Join(t.TempDir(), "flip.token")
	const token = "0123456789abcdef-flip-token"
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctl, err := membership.Join(membership.Config{Name: "control-test", BindAddr: freeAddr(t), Fast: true,
		Meta: membership.Meta{Role: membership.RoleControl}})
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Leave()
	listen, admin := freeAddr(t), freeAddr(t)
	cmd := exec.Command(bin, "proxy", "--listen", listen, "--source", a.ConnectString(), "--target", b.ConnectString(),
		"--admin-addr", admin, "--admin-token-file", tokenFile, "--metrics-addr", "", "--name", "proxy-1",
		"--gossip-addr", freeAddr(t), "--gossip-join", ctl.Members()[0].Addr, "--gossip-insecure")
	logs := &syncBuffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("proxy log:\n%s", logs.String())
		}
	}()
	waitFor(t, func() bool {
		out, err := zktest.FourLetterWord(listen, "ruok", time.Second)
		return err == nil && out == "imok"
	})
	waitFor(t, func() bool {
		for _, m := range ctl.Members() {
			if m.Name == "proxy-1" && m.Meta.API == "http://"+admin {
				return true
			}
		}
		return false
	})

	c, ev, err := zk.Connect([]string{listen}, 4*time.Second, zk.WithLogInfo(false))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Create("/flip-eph", []byte("x"), zk.FlagEphemeral, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	cb, _, err := zk.Connect(b.Addrs(), 10*time.Second, zk.WithLogInfo(false))
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close()
	waitFor(t, func() bool { ok, _, _ := cb.Exists("/flip-eph"); return ok }) // mirrored

	fctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if acked, _ := (&membership.Fleet{Agent: ctl}).Flip(fctx, "m", 1, ensemble.Target, []string{"proxy-1"}); len(acked) != 0 {
		t.Fatalf("a flip without the token was acknowledged: %v", acked)
	}
	// The executor asks again when a proxy does not acknowledge (a drain
	// longer than the pause budget on a loaded machine answers 503).
	var acked []string
	for try := 0; try < 5 && len(acked) == 0; try++ {
		acked, err = (&membership.Fleet{Agent: ctl, Token: token}).Flip(fctx, "m", 1, ensemble.Target, []string{"proxy-1"})
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(acked) != 1 {
		t.Fatalf("flip with the token not acknowledged in 5 tries: %v", acked)
	}
	if _, err := c.Create("/flip-after", nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatalf("write after the flip: %v", err)
	}
	if ok, _, err := cb.Exists("/flip-after"); err != nil || !ok {
		t.Fatalf("write after the flip not on B: %v %v", ok, err)
	}
	_, st, err := cb.Get("/flip-eph")
	if err != nil || st.EphemeralOwner == 0 {
		t.Fatalf("ephemeral on B after the flip: %+v %v", st, err)
	}
	waitFor(t, func() bool { return len((&membership.Fleet{Agent: ctl}).Stale(1)) == 0 })
	for len(ev) > 0 {
		if e := <-ev; e.State == zk.StateDisconnected || e.State == zk.StateExpired {
			t.Fatalf("client saw %v during the flip", e.State)
		}
	}
	// Closing the session removes the ephemeral from B (owned by the
	// session that serves).
	c.Close()
	waitFor(t, func() bool { ok, _, _ := cb.Exists("/flip-eph"); return !ok })
}
