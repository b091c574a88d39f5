package sandbox

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

// TestSandboxKeepsEveryGuarantee runs the README's sandbox briefly: two
// ZooKeeper servers of A are killed under Mesos-shaped load through three
// proxies, while continuous sync keeps B a copy of A. No session may
// expire, no leader change, no write be lost, and B must end equal to A.
func TestSandboxKeepsEveryGuarantee(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a ZooKeeper ensemble")
	}
	var out bytes.Buffer
	rep, err := Run(context.Background(), Config{Duration: 12 * time.Second, Kills: 2}, &out)
	if err != nil {
		t.Fatal(err)
	}
	t.Log(out.String())
	if !rep.OK() {
		t.Fatalf("sandbox guarantees broken: %+v", rep)
	}
	if rep.ServerKills != 2 || rep.Reattaches < 1 {
		t.Fatalf("faults did not happen as planned: kills=%d re-attaches=%v", rep.ServerKills, rep.Reattaches)
	}
	if !rep.SyncChecked || !rep.SyncEqual {
		t.Fatalf("ensemble B did not converge to A under continuous sync: %v", rep.SyncDifferences)
	}
	// The load must have run (a few dozen operations at least); how much
	// it did depends on the machine (94 writes at load average 15, with
	// A's leader killed and re-elected for 5 s): no throughput goal here.
	if rep.Expired != 0 || rep.Writes < 30 || rep.Reads < 30 {
		t.Fatalf("report: %+v", rep)
	}
	if !strings.Contains(out.String(), "verdict                    PASS") {
		t.Fatalf("report does not say PASS:\n%s", out.String())
	}
}
