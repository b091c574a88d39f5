package fence_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/fence"
	"github.com/zk-migrate/zk-migrate/zkclient"
	"github.com/zk-migrate/zk-migrate/zktest"
)

var ens *zktest.Ensemble

func TestMain(m *testing.M) {
	var err error
	ens, err = zktest.Start(context.Background(), zktest.Config{Servers: 1, Name: "fence"})
	if err != nil {
		fmt.Fprintln(os.Stderr, "start ZooKeeper:", err)
		os.Exit(1)
	}
	code := m.Run()
	ens.Close()
	os.Exit(code)
}

func dial(t *testing.T) (*zkclient.Conn, context.Context) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	c, err := zkclient.Dial(ctx, ens.Addrs(), zkclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, ctx
}

// A proxy that resumed its clients first (its hold ran out) makes the
// control plane's conditional raise fail, naming it; nothing is raised,
// so its clients' writes go on. Once it holds again, the raise goes
// through, and a proxy resuming after that learns the flip instead.
func TestRaiseIfLosesToAProxyThatResumedFirst(t *testing.T) {
	c, ctx := dial(t)
	path := "/fence-" + t.Name()
	if _, err := fence.Read(ctx, c, path); err != nil {
		t.Fatal(err)
	}
	m1, err := fence.Arm(ctx, c, fence.MarkerPath(path, "proxy/1"))
	if err != nil {
		t.Fatal(err)
	}
	m2, err := fence.Arm(ctx, c, fence.MarkerPath(path, "proxy-2"))
	if err != nil {
		t.Fatal(err)
	}
	if _, resumed, err := fence.Resume(ctx, c, path, m1.Path, 1); err != nil || !resumed {
		t.Fatalf("resume before any raise: resumed=%v err=%v, want resumed", resumed, err)
	}
	rec, lapsed, err := fence.RaiseIf(ctx, c, path, 1, ensemble.Target, []fence.Marker{m1, m2})
	if err != nil {
		t.Fatal(err)
	}
	if len(lapsed) != 1 || lapsed[0] != 0 {
		t.Fatalf("lapsed = %v, want [0] (the proxy that resumed)", lapsed)
	}
	if now, _ := fence.Read(ctx, c, path); now.Epoch != 0 || rec.Epoch != 0 {
		t.Fatalf("the fence records epoch %d after a refused raise, want 0", now.Epoch)
	}

	if m1, err = fence.Arm(ctx, c, m1.Path); err != nil { // held again
		t.Fatal(err)
	}
	rec, lapsed, err = fence.RaiseIf(ctx, c, path, 1, ensemble.Target, []fence.Marker{m1, m2})
	if err != nil || len(lapsed) != 0 {
		t.Fatalf("raise with every proxy holding: lapsed=%v err=%v", lapsed, err)
	}
	if now, _ := fence.Read(ctx, c, path); now.Epoch != 1 || now.Primary != ensemble.Target || now.Version != rec.Version {
		t.Fatalf("fence = %+v, want epoch 1 to target at version %d", now, rec.Version)
	}
	got, resumed, err := fence.Resume(ctx, c, path, m2.Path, 1)
	if err != nil || resumed || got.Epoch != 1 || got.Primary != ensemble.Target {
		t.Fatalf("resume after the raise: %+v resumed=%v err=%v, want the raised record and no resume", got, resumed, err)
	}
	if st, _ := c.Exists(ctx, m2.Path); st.Version != m2.Version {
		t.Fatalf("a resume that found the fence raised bumped its marker (version %d, was %d)", st.Version, m2.Version)
	}
	// A raise repeated by a new leader leaves the fence alone.
	if _, lapsed, err = fence.RaiseIf(ctx, c, path, 1, ensemble.Target, []fence.Marker{{Path: m1.Path, Version: 99}}); err != nil || len(lapsed) != 0 {
		t.Fatalf("repeated raise: lapsed=%v err=%v, want nothing to do", lapsed, err)
	}
}

// The barrier's announcement: written before the holds (creating the
// fence), read by a proxy, a new round at each write, left by the raise
// (a proxy holding itself swaps on the raise and resumes only when the
// barrier is over), and withdrawn only for its own epoch.
func TestBarrierAnnouncement(t *testing.T) {
	c, ctx := dial(t)
	path := "/fence-" + t.Name()
	b1, err := fence.Announce(ctx, c, path, 1, ensemble.Target)
	if err != nil {
		t.Fatal(err)
	}
	got, ok, err := fence.ReadBarrier(ctx, c, path)
	if err != nil || !ok || got.Epoch != 1 || got.Primary != ensemble.Target || got.Round != b1.Round {
		t.Fatalf("read the announcement: %+v %v %v, want %+v", got, ok, err, b1)
	}
	b2, err := fence.Announce(ctx, c, path, 1, ensemble.Target)
	if err != nil || b2.Round == b1.Round {
		t.Fatalf("announced again: round %d (was %d), %v", b2.Round, b1.Round, err)
	}
	if err := fence.Withdraw(ctx, c, path, 2); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := fence.ReadBarrier(ctx, c, path); !ok {
		t.Fatal("withdrawing another epoch removed the announcement")
	}
	if rec, err := fence.Raise(ctx, c, path, 1, ensemble.Target); err != nil || rec.Epoch != 1 {
		t.Fatalf("raise: %+v %v", rec, err)
	}
	if _, ok, _ := fence.ReadBarrier(ctx, c, path); !ok {
		t.Fatal("the raise removed the announcement")
	}
	if err := fence.Withdraw(ctx, c, path, 1); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := fence.ReadBarrier(ctx, c, path); ok || err != nil {
		t.Fatalf("withdrawn, the announcement is still there (%v, %v)", ok, err)
	}
}
