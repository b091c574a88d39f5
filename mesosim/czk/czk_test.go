package czk_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zk-migrate/zk-migrate/mesosim/czk"
	"github.com/zk-migrate/zk-migrate/zktest"
)

// TestCClientCallsWatchesAndClose runs the binding against a real server:
// concurrent calls from many goroutines, a child watch delivered from the
// C client's thread, an expired-session error for a session the server
// dropped, and Close removing the session's ephemerals at once.
func TestCClientCallsWatchesAndClose(t *testing.T) {
	if testing.Short() {
		t.Skip("needs ZooKeeper")
	}
	czk.Quiet()
	ctx := context.Background()
	ens, err := zktest.Start(ctx, zktest.Config{Servers: 1, Name: "czk"})
	if err != nil {
		t.Fatal(err)
	}
	defer ens.Close()

	dial := func() *czk.Conn {
		c, err := czk.Dial(ens.ConnectString(), 4*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for c.State() != czk.StateConnected {
			if time.Now().After(deadline) {
				t.Fatalf("not connected: %v", c.State())
			}
			time.Sleep(20 * time.Millisecond)
		}
		return c
	}
	a, b := dial(), dial()
	defer a.Close()
	if _, err := a.Create(ctx, "/czk", []byte("x"), czk.Persistent, false); err != nil {
		t.Fatal(err)
	}
	if kids, err := a.Children(ctx, "/czk", true); err != nil || len(kids) != 0 {
		t.Fatalf("children: %v %v", kids, err)
	}

	var wg sync.WaitGroup
	paths := make([]string, 16)
	for i := range paths {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, err := b.Create(ctx, "/czk/json.info_", []byte(fmt.Sprint(i)), czk.EphemeralSequential, false)
			if err != nil {
				t.Error(err)
			}
			paths[i] = p
		}()
	}
	wg.Wait()
	if !strings.HasPrefix(paths[0], "/czk/json.info_") || len(paths[0]) != len("/czk/json.info_")+10 {
		t.Fatalf("created %q", paths[0])
	}
	data, st, err := b.Get(ctx, paths[3], false)
	if err != nil || string(data) != "3" || st.EphemeralOwner != b.SessionID() {
		t.Fatalf("get %s: %q %+v %v (session 0x%x)", paths[3], data, st, err, b.SessionID())
	}

	waitEvent := func(c *czk.Conn, typ czk.EventType, path string) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			for _, ev := range c.Events() {
				if ev.Type == typ && ev.Path == path {
					return
				}
			}
			select {
			case <-c.Notify():
			case <-deadline:
				t.Fatalf("no %v event on %s", typ, path)
			}
		}
	}
	waitEvent(a, czk.EventChild, "/czk")

	// Close ends the session: its ephemerals go at once.
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if kids, err := a.Children(ctx, "/czk", false); err != nil || len(kids) != 0 {
		t.Fatalf("after Close: %v %v; want no ephemerals left", kids, err)
	}
	if _, err := b.Children(ctx, "/czk", false); !czk.IsCode(err, czk.ErrClosing) {
		t.Fatalf("call on a closed conn: %v", err)
	}
	if ok, err := a.Exists(ctx, "/nope", false); ok || err != nil {
		t.Fatalf("exists /nope: %v %v", ok, err)
	}
	if err := a.Delete(ctx, "/nope", -1); !czk.IsCode(err, czk.ErrNoNode) {
		t.Fatalf("delete /nope: %v", err)
	}
}
