package main

import (
	"fmt"
	"testing"
	"time"
)

// newLeaderSynced reports whether a node other than old leads and its
// replicator runs the migration's sync with the digests of /mesos compared
// and equal: the earliest a phase 1 can honestly be called healthy after
// old was lost.
func (c *cluster) newLeaderSynced(old int) (bool, string) {
	for _, i := range c.live() {
		var h struct {
			IsLeader bool `json:"is_leader"`
		}
		if i == old || c.get(i, "/healthz", &h) != nil || !h.IsLeader {
			continue
		}
		var st map[string]struct {
			Running bool            `json:"running"`
			Node    string          `json:"node"`
			Digests map[string]bool `json:"digests_equal"`
		}
		if err := c.get(i, "/api/v1/sync/status", &st); err != nil {
			return false, fmt.Sprintf("c%d leads; sync status: %v", i+1, err)
		}
		s := st["prod"]
		return s.Running && s.Node == fmt.Sprintf("c%d", i+1) && s.Digests["/mesos"],
			fmt.Sprintf("c%d leads; its sync: %+v", i+1, s)
	}
	return false, "no new leader yet"
}

// TestValidateIsNotHealthyUntilTheNewLeaderSyncs: after the control leader
// is SIGKILLed in phase 1, `validate --phase current` polled on the
// followers every 200 ms never exits 0 (healthy) before the new leader
// runs the sync and has compared the digests; it says NOT healthy (exit
// 3) until then, and healthy once it has.
func TestValidateIsNotHealthyUntilTheNewLeaderSyncs(t *testing.T) {
	c := newCluster(t, "ll1")
	c.must(2, "start", "--config", c.cfg)
	c.waitStep(2, "1-deploy-b-and-sync", "succeeded")
	first := c.leader()
	var followers []int
	for i := range c.apis {
		if i != first {
			followers = append(followers, i)
		}
	}
	within(t, 15*time.Second, "validate healthy before the kill", func() bool {
		_, code := c.cli(followers[0], "validate", "--phase", "current")
		return code == 0
	})
	c.kill(first)
	killed := time.Now()
	notHealthy := 0
	for n := 0; ; n++ {
		if time.Since(killed) > 30*time.Second {
			t.Fatalf("validate never healthy again within 30 s of the kill (%d NOT healthy answers)", notHealthy)
		}
		f := followers[n%2]
		out, code := c.cli(f, "validate", "--phase", "current")
		if code == 0 {
			ok, why := c.newLeaderSynced(first)
			if !ok {
				t.Fatalf("validate on c%d said healthy %v after the leader's kill, before the new leader synced (%s):\n%s",
					f+1, time.Since(killed).Round(time.Millisecond), why, out)
			}
			t.Logf("healthy again %v after the kill, after %d NOT healthy answers", time.Since(killed).Round(time.Millisecond), notHealthy)
			break
		}
		if code != exitDifferent {
			t.Fatalf("validate on c%d: exit %d (want 3 while unknown)\n%s", f+1, code, out)
		}
		notHealthy++
		time.Sleep(200 * time.Millisecond)
	}
	if notHealthy == 0 {
		t.Fatal("validate was never NOT healthy after the leader's kill")
	}
}
