package zktest

import (
	"context"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"
)

// TestTwoEnsemblesKillRestart starts ensembles A and B side by side, writes
// to each, and checks that killing a server keeps quorum and a restarted
// server rejoins with the data.
func TestTwoEnsemblesKillRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("starts JVMs")
	}
	ctx := context.Background()
	a, err := Start(ctx, Config{Servers: 3, Name: "a"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	b, err := Start(ctx, Config{Servers: 3, Name: "b"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)

	ca, _, err := zk.Connect(a.Addrs(), 5*time.Second, zk.WithLogInfo(false))
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close()
	if _, err := ca.Create("/only-on-a", []byte("x"), 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	cb, _, err := zk.Connect(b.Addrs(), 5*time.Second, zk.WithLogInfo(false))
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close()
	if ok, _, err := cb.Exists("/only-on-a"); err != nil || ok {
		t.Fatalf("ensembles are not separate: exists=%v err=%v", ok, err)
	}

	if err := a.Kill(1); err != nil {
		t.Fatal(err)
	}
	if a.Server(1).Running() {
		t.Fatal("server 1 still marked running after Kill")
	}
	if _, err := FourLetterWord(a.Server(1).Addr(), "ruok", time.Second); err == nil {
		t.Fatal("killed server still answers")
	}
	// Two of three remain: quorum holds, writes go on.
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := ca.Create("/after-kill", nil, 0, zk.WorldACL(zk.PermAll))
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no write after killing one of three: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err := a.Restart(ctx, 1); err != nil {
		t.Fatal(err)
	}
	c1, _, err := zk.Connect([]string{a.Server(1).Addr()}, 5*time.Second, zk.WithLogInfo(false))
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	if _, err := c1.Sync("/"); err != nil {
		t.Fatal(err)
	}
	if ok, _, err := c1.Exists("/after-kill"); err != nil || !ok {
		t.Fatalf("restarted server lacks a write made while it was down: exists=%v err=%v", ok, err)
	}
}
