package server

import (
	"context"
	"net"
	"strings"
	"testing"

	"github.com/zk-migrate/zk-migrate/control"
	"github.com/zk-migrate/zk-migrate/zktest"
)

func TestPreflightNeedsAQuorumOfBothEnsembles(t *testing.T) {
	if testing.Short() {
		t.Skip("starts ZooKeeper")
	}
	ens, err := zktest.Start(context.Background(), zktest.Config{Servers: 3, Name: "pre"})
	if err != nil {
		t.Fatal(err)
	}
	defer ens.Close()
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := l.Addr().String()
	l.Close()

	var cfg control.Config
	cfg.Migration.SourceZK = ens.ConnectString()
	cfg.Migration.TargetZK = dead
	if _, err := Preflight(&cfg); err == nil || !strings.Contains(err.Error(), "ensemble B (target_zk) has no quorum") {
		t.Fatalf("dead target: %v", err)
	}
	cfg.Migration.TargetZK = ens.ConnectString()
	if notes, err := Preflight(&cfg); err != nil || len(notes) != 0 {
		t.Fatalf("healthy ensembles: %v %v", notes, err)
	}
	// One of three down: still a quorum, with a note.
	if err := ens.Kill(1); err != nil {
		t.Fatal(err)
	}
	notes, err := Preflight(&cfg)
	if err != nil || len(notes) == 0 || !strings.Contains(strings.Join(notes, " "), "not serving") {
		t.Fatalf("one server down: %v %v", notes, err)
	}
	if h := CheckEnsemble(ens.ConnectString()); !h.Quorum() || h.Serving != 2 || len(h.Versions) != 2 || !strings.HasPrefix(h.Versions[0], "3.8") {
		t.Fatalf("health: %+v", h)
	}
}
