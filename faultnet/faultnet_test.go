package faultnet

import (
	"context"
	"flag"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/zktest"
)

var ens *zktest.Ensemble

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run())
	}
	var err error
	ens, err = zktest.Start(context.Background(), zktest.Config{Servers: 1, Name: "faultnet"})
	if err != nil {
		panic(err)
	}
	code := m.Run()
	ens.Close()
	os.Exit(code)
}

type quiet struct{}

func (quiet) Printf(string, ...any) {}

// session opens a ZooKeeper session through addr and returns its events.
func session(t *testing.T, addr string) (*zk.Conn, <-chan zk.Event) {
	t.Helper()
	c, ev, err := zk.Connect([]string{addr}, 10*time.Second, zk.WithLogger(quiet{}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	out := make(chan zk.Event, 64)
	go func() {
		for e := range ev {
			select {
			case out <- e:
			default:
			}
		}
	}()
	for deadline := time.Now().Add(30 * time.Second); c.State() != zk.StateHasSession; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no session through the hop")
		}
	}
	return c, out
}

// TestHopFaults: a ZooKeeper session through the hop sees each fault as a
// network would make it: a delay adds at least twice itself to a round
// trip; a partition stops a request (not an error: it waits) until it
// heals, then it completes; Reset drops the connection and the client
// reconnects through the hop to the same session; Close ends every
// goroutine.
func TestHopFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("starts ZooKeeper")
	}
	before := runtime.NumGoroutine()
	hop, err := Listen("127.0.0.1:0", ens.Server(1).Addr())
	if err != nil {
		t.Fatal(err)
	}
	c, ev := session(t, hop.Addr())
	id := c.SessionID()

	const delay = 100 * time.Millisecond
	hop.SetDelay(delay)
	t0 := time.Now()
	if _, _, err := c.Exists("/"); err != nil {
		t.Fatal(err)
	}
	if rt := time.Since(t0); rt < 2*delay {
		t.Fatalf("round trip %v through a hop delaying %v each way", rt, delay)
	}
	hop.SetDelay(0)

	hop.Partition(true)
	done := make(chan error, 1)
	go func() { _, err := c.Create("/faultnet", []byte("x"), 0, zk.WorldACL(zk.PermAll)); done <- err }()
	select {
	case err := <-done:
		t.Fatalf("a request crossed the partition: %v", err)
	case <-time.After(500 * time.Millisecond):
	}
	hop.Partition(false)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("after the partition healed: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the request did not complete after the partition healed")
	}
	if ok, _, err := c.Exists("/faultnet"); err != nil || !ok {
		t.Fatalf("the write made across the partition: %v %v", ok, err)
	}

	hop.Reset()
	disconnected := false
	for deadline := time.After(10 * time.Second); !disconnected; {
		select {
		case e := <-ev:
			disconnected = e.State == zk.StateDisconnected
		case <-deadline:
			t.Fatal("Reset did not drop the connection")
		}
	}
	for deadline := time.Now().Add(15 * time.Second); c.State() != zk.StateHasSession; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the client did not reconnect through the hop")
		}
	}
	if c.SessionID() != id {
		t.Fatalf("session %x after the reset, want %x", c.SessionID(), id)
	}
	if err := c.Delete("/faultnet", -1); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := hop.Close(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); runtime.NumGoroutine() > before+2; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutines %d after Close, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
	}
}
