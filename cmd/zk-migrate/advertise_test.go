package main

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/zk-migrate/zk-migrate/control"
	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/membership"
)

// TestControlNodeAdvertisesTheRecordedPrimary checks the control node's
// half of "the recorded primary wins over --primary": its gossip metadata
// follows the replicated state (the migration with the highest flip
// epoch), so another member (a proxy starting up) reads B after a flip and
// A again after a rollback.
func TestControlNodeAdvertisesTheRecordedPrimary(t *testing.T) {
	var mu sync.Mutex
	st := &control.State{Migrations: map[string]*control.Migration{}}
	state := func() *control.State {
		mu.Lock()
		defer mu.Unlock()
		cp := &control.State{Migrations: map[string]*control.Migration{}}
		for id, m := range st.Migrations {
			c := *m
			cp.Migrations[id] = &c
		}
		return cp
	}
	ctl, err := membership.Join(membership.Config{Name: "control-c1", BindAddr: freeAddr(t), Fast: true,
		Meta: membership.Meta{Role: membership.RoleControl}})
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Leave()
	watcher, err := membership.Join(membership.Config{Name: "proxy-p1", BindAddr: freeAddr(t), Fast: true,
		Seeds: []string{ctl.Members()[0].Addr}, Meta: membership.Meta{Role: membership.RoleProxy}})
	if err != nil {
		t.Fatal(err)
	}
	defer watcher.Leave()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); advertisePrimary(ctx, ctl, state) }()
	defer func() { cancel(); <-done }()

	seen := func(want ensemble.Name, epoch int64) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for {
			for _, m := range watcher.Members() {
				if m.Meta.Role == membership.RoleControl && m.Meta.Primary == want && m.Meta.Epoch == epoch {
					return
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("the proxy never saw the control node advertise primary %q at epoch %d: %+v", want, epoch, watcher.Members())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	mu.Lock()
	st.Migrations["old"] = &control.Migration{ID: "old", Primary: "A", Epoch: 1}
	st.Migrations["prod"] = &control.Migration{ID: "prod", Primary: "B", Epoch: 3}
	mu.Unlock()
	seen(ensemble.Target, 3)
	mu.Lock()
	st.Migrations["prod"].Primary, st.Migrations["prod"].Epoch = "A", 4 // a rollback across the flip
	mu.Unlock()
	seen(ensemble.Source, 4)
}
