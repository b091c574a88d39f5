package mesosim_test

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/zk-migrate/zk-migrate/proxy"
	"github.com/zk-migrate/zk-migrate/proxy/proxytest"
	"github.com/zk-migrate/zk-migrate/zktest"
)

// TestClusterBehindAProxySurvivesAServerKill puts a zk-migrate proxy
// between the emulated cluster's C clients and the ensemble, SIGKILLs the
// ZooKeeper server holding most of the sessions and checks what Mesos
// would show: no process saw a disconnection, no session expired, the
// leader never changed, no task failed.
func TestClusterBehindAProxySurvivesAServerKill(t *testing.T) {
	needZK(t)
	p, err := proxytest.Start(proxy.Config{Upstream: ens.Addrs(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	const st = 4 * time.Second
	c := newClusterOn(t, p.Addr, st, 3, 2, 2, 4)
	leader := waitOneLeader(t, c.masters, 30*time.Second)
	c.waitSteady(t, 2, 4)

	victim, most := 0, -1
	for i, s := range ens.Servers {
		out, err := zktest.FourLetterWord(s.Addr(), "cons", time.Second)
		if err != nil {
			continue
		}
		if n := strings.Count(out, "sid="); n > most {
			victim, most = i+1, n
		}
	}
	if most <= 0 {
		t.Fatalf("no server holds a session of the proxy")
	}
	if err := ens.Kill(victim); err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := ens.Restart(ctx, victim); err != nil {
			t.Errorf("restart server %d: %v", victim, err)
		}
	}()
	time.Sleep(2 * st) // long enough for any session the proxy let go to expire
	if l := waitOneLeader(t, c.masters, 10*time.Second); l != leader {
		t.Fatalf("leadership moved from master%d to master%d when a ZooKeeper server died behind the proxy", leader+1, l+1)
	}
	c.waitSteady(t, 2, 4)
	if s := frameworkState(t, c.fw); s.Failed != 0 {
		t.Errorf("%d tasks failed: %+v", s.Failed, s)
	}
	for _, pr := range append(append(append([]*proc{}, c.masters...), c.agents...), c.fw) {
		out := pr.out.String()
		if pr.exited() || strings.Contains(out, "disconnected from ZooKeeper") || strings.Contains(out, "expire") {
			t.Errorf("%s noticed the server's death (exited %v):\n%s", pr.name, pr.exited(), tail(out, 6))
		}
	}
}

// TestLeaderCutOffFromZooKeeperExits: a leader that cannot reach ZooKeeper
// at all (its proxy is gone) gives its session up itself once it has been
// disconnected for the session timeout, and exits, as Mesos' GroupProcess
// and master do; the C client alone would keep trying to reconnect.
func TestLeaderCutOffFromZooKeeperExits(t *testing.T) {
	needZK(t)
	p, err := proxytest.Start(proxy.Config{Upstream: ens.Addrs(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	c := newClusterOn(t, p.Addr, sessionTimeout, 1, 1, 0, 0)
	waitOneLeader(t, c.masters, 30*time.Second)
	p.Close()
	if code := c.masters[0].waitExit(t, 10*sessionTimeout); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	out := c.masters[0].out.String()
	if !strings.Contains(out, "timed out waiting to reconnect to ZooKeeper") || !strings.Contains(out, "Lost leadership") {
		t.Fatalf("the leader's last words do not say it gave its session up:\n%s", tail(out, 6))
	}
}
