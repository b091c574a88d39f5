package mesosim_test

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestQuorumRuleRefusesAnExtraMaster: with --quorum 1 only one log replica
// may exist; a second master exits with the reason and the fix, and the
// first keeps leading.
func TestQuorumRuleRefusesAnExtraMaster(t *testing.T) {
	needZK(t)
	c := newCluster(t, 1, 1, 0, 0)
	first := waitOneLeader(t, c.masters, 30*time.Second)
	extra := c.startMaster(t, 1, freePort(t))
	if code := extra.waitExit(t, 20*time.Second); code != 1 {
		t.Fatalf("extra master exited %d, want 1", code)
	}
	if out := extra.out.String(); !strings.Contains(out, "--quorum=1 allows at most 1") || !strings.Contains(out, "one for one") {
		t.Fatalf("extra master's reason does not name the rule and the fix:\n%s", tail(out, 5))
	}
	if l := waitOneLeader(t, c.masters, 10*time.Second); l != first || c.masters[first].exited() {
		t.Fatalf("the first master stopped leading")
	}
}

// TestElectedMasterWithoutQuorumExits: an elected master that cannot read
// the registry from --quorum replicas within --registry_fetch_timeout
// exits ("Recovery failed"), as Mesos does.
func TestElectedMasterWithoutQuorumExits(t *testing.T) {
	needZK(t)
	c := &cluster{path: "/" + t.Name() + "/mesos", quorum: 2}
	c.zkURL = "zk://" + ens.ConnectString() + c.path
	m := start(t, "master1", freePort(t), "master", "--zk", c.zkURL, "--quorum", "2",
		"--zk_session_timeout", sessionTimeout.String(), "--registry_fetch_timeout", "1s")
	if code := m.waitExit(t, 20*time.Second); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	if out := m.out.String(); !strings.Contains(out, "Recovery failed") || !strings.Contains(out, "1 of 2 replicas") {
		t.Fatalf("no reason naming the missing quorum:\n%s", tail(out, 5))
	}
}

// TestLeaderThatLosesQuorumExits: the leader's registry write needs a
// quorum of replicas; with both followers stopped it exits after
// --registry_store_timeout ("Registrar aborting").
func TestLeaderThatLosesQuorumExits(t *testing.T) {
	needZK(t)
	c := &cluster{path: "/" + t.Name() + "/mesos", quorum: 2}
	c.zkURL = "zk://" + ens.ConnectString() + c.path
	for i := 0; i < 3; i++ {
		c.masters = append(c.masters, start(t, fmt.Sprintf("master%d", i+1), freePort(t), "master", "--zk", c.zkURL,
			"--quorum", "2", "--zk_session_timeout", "10s", "--registry_store_timeout", "1s"))
	}
	leader := waitOneLeader(t, c.masters, 30*time.Second)
	for i, m := range c.masters {
		if i != leader {
			m.stop(t)
		}
	}
	code, _, body, _ := call("POST", c.masters[leader].url()+"/master/maintenance/schedule",
		map[string]any{"windows": []any{map[string]any{"machine_ids": []map[string]string{{"hostname": "agent1"}}}}})
	if code == 200 {
		t.Fatalf("a registry write without a quorum succeeded: %s", body)
	}
	if code := c.masters[leader].waitExit(t, 10*time.Second); code != 1 {
		t.Fatalf("leader exited %d, want 1", code)
	}
	if out := c.masters[leader].out.String(); !strings.Contains(out, "Registrar aborting") {
		t.Fatalf("no reason:\n%s", tail(out, 5))
	}
}

// TestFollowerWithExpiredSessionContendsAgain: a follower whose session
// expired (stopped past its session timeout) does what a Mesos master
// does: "Lost candidacy as a follower... Contend again", with a new
// json.info_ on a new session; only a leader exits.
func TestFollowerWithExpiredSessionContendsAgain(t *testing.T) {
	needZK(t)
	c := newCluster(t, 3, 2, 0, 0)
	zc := zkConn(t)
	leader := waitOneLeader(t, c.masters, 30*time.Second)
	follower := (leader + 1) % 3
	nodes, _ := masterNodes(t, zc, c.path)
	c.masters[follower].signal(syscall.SIGSTOP)
	waitFor(t, 4*sessionTimeout, "the stopped follower's json.info_ to expire", func() bool {
		n, _ := masterNodes(t, zc, c.path)
		return len(n) == 2
	})
	c.masters[follower].signal(syscall.SIGCONT)
	waitFor(t, 20*time.Second, "the follower contending again with a new json.info_", func() bool {
		n, pids := masterNodes(t, zc, c.path)
		want := fmt.Sprintf("master@127.0.0.1:%d", c.masters[follower].port)
		return len(n) == 3 && pids[2] == want && n[2] > nodes[2]
	})
	if c.masters[follower].exited() {
		t.Fatal("the follower exited")
	}
	if out := c.masters[follower].out.String(); !strings.Contains(out, "Lost candidacy as a follower... Contend again") {
		t.Fatalf("no log line for the lost candidacy:\n%s", tail(out, 8))
	}
	if l := waitOneLeader(t, c.masters, 10*time.Second); l != leader {
		t.Fatalf("leadership moved from master%d to master%d", leader+1, l+1)
	}
}

// TestCredentialsGiveMesosACL: with digest credentials in the zk URL a
// master authenticates and creates its znodes with Mesos' ACL,
// EVERYONE_READ_CREATOR_ALL, so that it alone can delete them.
func TestCredentialsGiveMesosACL(t *testing.T) {
	needZK(t)
	path := "/" + t.Name() + "/mesos"
	m := start(t, "master1", freePort(t), "master", "--zk", "zk://mesos:secret@"+ens.ConnectString()+path,
		"--quorum", "1", "--zk_session_timeout", sessionTimeout.String())
	waitOneLeader(t, []*proc{m}, 30*time.Second)
	zc := zkConn(t)
	nodes, _ := masterNodes(t, zc, path)
	if len(nodes) != 1 {
		t.Fatalf("json.info_ nodes: %v", nodes)
	}
	acl, _, err := zc.GetACL(path + "/" + nodes[0])
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range acl {
		got = append(got, fmt.Sprintf("%s:%s:%d", a.Scheme, strings.SplitN(a.ID, ":", 2)[0], a.Perms))
	}
	if strings.Join(got, ",") != "world:anyone:1,digest:mesos:31" {
		t.Fatalf("ACL of %s: %v; want world:anyone READ and digest mesos ALL", nodes[0], got)
	}
	if err := zc.Delete(path+"/"+nodes[0], -1); err == nil {
		t.Fatal("an unauthenticated client deleted the master's znode")
	}
	if strings.Contains(m.out.String(), "secret") {
		t.Fatal("the password is in the log")
	}
}

// TestLeaderWhoseZnodeIsDeletedExits: deleting the leader's json.info_
// ends its candidacy: it exits 1 saying so, and the next lowest leads.
func TestLeaderWhoseZnodeIsDeletedExits(t *testing.T) {
	needZK(t)
	c := newCluster(t, 3, 2, 0, 0)
	leader := waitOneLeader(t, c.masters, 30*time.Second)
	zc := zkConn(t)
	nodes, _ := masterNodes(t, zc, c.path)
	if err := zc.Delete(c.path+"/"+nodes[0], -1); err != nil {
		t.Fatal(err)
	}
	if code := c.masters[leader].waitExit(t, 10*time.Second); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	// Its contender (the znode is gone) or its detector (another master is
	// now the lowest) notices first: both are Mesos' "Lost leadership".
	if out := c.masters[leader].out.String(); !strings.Contains(out, "Lost leadership") ||
		!strings.Contains(out, "was deleted") && !strings.Contains(out, "the leading master is now") {
		t.Fatalf("no reason:\n%s", tail(out, 5))
	}
	if next := waitOneLeader(t, c.masters, 30*time.Second); next == leader {
		t.Fatal("no new leader")
	}
}
