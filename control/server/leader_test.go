package server

import (
	"context"
	"testing"

	"github.com/zk-migrate/zk-migrate/alert"
	"github.com/zk-migrate/zk-migrate/control"
	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/zkclient"
	"github.com/zk-migrate/zk-migrate/zktest"
)

// TestUnexpectedLeaderChangeAlerts: masters contend on a real server; when
// the leader's node goes outside phases 2 and 3 an alert is raised, and
// not during phase 2, where leadership moves by design.
func TestUnexpectedLeaderChangeAlerts(t *testing.T) {
	if testing.Short() {
		t.Skip("starts ZooKeeper")
	}
	ctx := context.Background()
	ens, err := zktest.Start(ctx, zktest.Config{Servers: 1, Name: "leader"})
	if err != nil {
		t.Fatal(err)
	}
	defer ens.Close()
	c, err := zkclient.Dial(ctx, ens.Addrs(), zkclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Create(ctx, "/mesos", nil, zkclient.OpenACL, 0); err != nil {
		t.Fatal(err)
	}
	var masters []string
	for i := 0; i < 3; i++ {
		p, err := c.Create(ctx, "/mesos/json.info_", []byte("{}"), zkclient.OpenACL, jute.FlagEphemeralSequential)
		if err != nil {
			t.Fatal(err)
		}
		masters = append(masters, p)
	}
	if l, ok, err := MesosLeader(ctx, c, "/mesos"); err != nil || !ok || "/mesos/"+l != masters[0] {
		t.Fatalf("leader %q %v %v, want %s", l, ok, err, masters[0])
	}
	var got []alert.Alert
	notify := func(a alert.Alert) { got = append(got, a) }
	w := &leaderWatch{}
	m := &control.Migration{ID: "m", Step: control.StepDeployB}
	for i := 0; i < 2; i++ {
		if err := w.check(ctx, c, m, []string{"/mesos", "/marathon"}, notify); err != nil {
			t.Fatal(err)
		}
	}
	if len(got) != 0 {
		t.Fatalf("alert without a change: %v", got)
	}
	if err := c.Delete(ctx, masters[0], -1); err != nil { // the leader fails over
		t.Fatal(err)
	}
	_ = w.check(ctx, c, m, []string{"/mesos"}, notify)
	if len(got) != 1 || got[0].Kind != "leader_change" {
		t.Fatalf("alerts: %v", got)
	}
	m.Step = control.StepMastersOnB // phase 2: expected moves
	if err := c.Delete(ctx, masters[1], -1); err != nil {
		t.Fatal(err)
	}
	_ = w.check(ctx, c, m, []string{"/mesos"}, notify)
	if len(got) != 1 {
		t.Fatalf("alerted during phase 2: %v", got)
	}
}
