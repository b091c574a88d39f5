package main

import (
	"testing"
	"time"
)

// TestSyncResumesFromItsCheckpoint: the whole control plane goes down in
// phase 1 (every node SIGKILLed), and while no sync runs a Mesos master's
// log replica znode is deleted on B, a state znode on A, and new ones are
// created on both. When the nodes come back, the new leader's replicator
// resumes from the checkpoint in the replicated state: the deletions reach
// the other side (nothing deleted comes back, as a dead master's replica
// would: Mesos then counts a replica too many), the creations are copied,
// the digests end equal, and the audit trail says the sync resumed from
// the checkpoint.
func TestSyncResumesFromItsCheckpoint(t *testing.T) {
	c := newCluster(t, "cp1")
	for _, p := range []string{"/mesos/log_replicas/r1", "/mesos/log_replicas/r2", "/mesos/state/s1", "/mesos/state/s2"} {
		c.create(c.za, p, "v")
	}
	c.must(2, "start", "--config", c.cfg)
	c.waitStep(2, "1-deploy-b-and-sync", "succeeded")
	c.equalOnBoth(20 * time.Second)
	within(t, 20*time.Second, "a sync checkpoint in the replicated state", func() bool {
		var m struct {
			Sync struct {
				Checkpoint *struct{ Node string } `json:"checkpoint"`
			} `json:"sync"`
		}
		return c.get(c.leader(), "/api/v1/migrations/prod", &m) == nil && m.Sync.Checkpoint != nil
	})

	for i := range c.cmds {
		c.kill(i)
	}
	for _, d := range []struct {
		side string
		path string
	}{{"b", "/mesos/log_replicas/r1"}, {"a", "/mesos/state/s1"}} {
		z := c.za
		if d.side == "b" {
			z = c.zb
		}
		if err := z.Delete(d.path, -1); err != nil {
			t.Fatalf("delete %s on %s: %v", d.path, d.side, err)
		}
	}
	c.create(c.za, "/mesos/state/new-on-a", "a")
	c.create(c.zb, "/mesos/log_replicas/new-on-b", "b")
	for i := range c.cmds {
		c.restart(i)
	}
	leader := c.leader()
	within(t, 30*time.Second, "sync runs on the new leader", func() bool { return c.syncRunsOn(leader) })
	c.equalOnBoth(30 * time.Second)
	for _, p := range []string{"/mesos/log_replicas/r1", "/mesos/state/s1"} {
		if exists(c.za, p) || exists(c.zb, p) {
			t.Errorf("%s came back (on A %v, on B %v): deleted on one side while no sync ran", p, exists(c.za, p), exists(c.zb, p))
		}
	}
	for _, p := range []string{"/mesos/log_replicas/r2", "/mesos/state/s2", "/mesos/state/new-on-a", "/mesos/log_replicas/new-on-b"} {
		if !exists(c.za, p) || !exists(c.zb, p) {
			t.Errorf("%s: on A %v, on B %v; want both", p, exists(c.za, p), exists(c.zb, p))
		}
	}
	if !c.auditHas(leader, "sync-started", "resumed from the checkpoint") {
		out, _ := c.cli(leader, "audit")
		t.Fatalf("the audit trail does not say the sync resumed from the checkpoint:\n%s", out)
	}
}
