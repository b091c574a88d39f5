package mesosim_test

import (
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

const sessionTimeout = 2 * time.Second

// cluster is 3 masters, agents and a framework on one --zk path.
type cluster struct {
	path    string
	zkURL   string
	masters []*proc
	agents  []*proc
	fw      *proc
	hist    string
	dir     string
	quorum  int
	st      time.Duration // session timeout
}

func (c *cluster) startMaster(t *testing.T, i int, port int) *proc {
	p := start(t, fmt.Sprintf("master%d", i+1), port, "master", "--zk", c.zkURL, "--quorum", fmt.Sprint(c.quorum),
		"--hostname", fmt.Sprintf("master%d", i+1),
		"--zk_session_timeout", c.st.String(), "--registry_fetch_timeout", "20s", "--registry_store_timeout", "10s",
		"--agent_ping_timeout", "500ms", "--max_agent_ping_timeouts", "6")
	if i < len(c.masters) {
		c.masters[i] = p
	} else {
		c.masters = append(c.masters, p)
	}
	return p
}

func (c *cluster) startAgent(t *testing.T, i int, port int) *proc {
	return start(t, fmt.Sprintf("agent%d", i+1), port, "agent", "--master", c.zkURL,
		"--hostname", fmt.Sprintf("agent%d", i+1), "--work_dir", t.TempDir(),
		"--zk_session_timeout", c.st.String(), "--heartbeat", "200ms")
}

// restart starts p again with the same arguments and port.
func restart(t *testing.T, p *proc) *proc { return start(t, p.name, p.port, p.args...) }

func newCluster(t *testing.T, masters, quorum, agents, tasks int) *cluster {
	return newClusterOn(t, ens.ConnectString(), sessionTimeout, masters, quorum, agents, tasks)
}

// newClusterOn is newCluster with every process reaching ZooKeeper at
// hosts with session timeout st.
func newClusterOn(t *testing.T, hosts string, st time.Duration, masters, quorum, agents, tasks int) *cluster {
	t.Helper()
	c := &cluster{path: "/" + strings.ReplaceAll(t.Name(), "/", "_") + "/mesos", dir: t.TempDir(), quorum: quorum, st: st}
	c.zkURL = "zk://" + hosts + c.path
	c.hist = filepath.Join(c.dir, "tasks.jsonl")
	for i := 0; i < masters; i++ {
		c.startMaster(t, i, freePort(t))
	}
	for i := 0; i < agents; i++ {
		c.agents = append(c.agents, c.startAgent(t, i, freePort(t)))
	}
	c.fw = start(t, "framework", freePort(t), "framework", "--master", c.zkURL, "--tasks", fmt.Sprint(tasks),
		"--churn", "300ms", "--history", c.hist, "--zk_session_timeout", c.st.String())
	return c
}

func (c *cluster) leaderURL(t *testing.T) string {
	return c.masters[waitOneLeader(t, c.masters, 30*time.Second)].url()
}

// waitRunning waits until the framework has n RUNNING tasks and the
// leader lists wantAgents registered agents.
func (c *cluster) waitSteady(t *testing.T, wantAgents, running int) {
	t.Helper()
	waitFor(t, 30*time.Second, fmt.Sprintf("%d agents registered and %d tasks RUNNING", wantAgents, running), func() bool {
		lead, _ := leaders(c.masters)
		if len(lead) != 1 {
			return false
		}
		var ag v1Agents
		code, _, _, _ := call("GET", c.masters[lead[0]].url()+"/health", nil)
		if code != 200 {
			return false
		}
		if !tryV1(c.masters[lead[0]].url(), "GET_AGENTS", &ag) || len(ag.GetAgents.Agents) != wantAgents {
			return false
		}
		s := frameworkState(t, c.fw)
		return s.Subscribed && s.Active["TASK_RUNNING"] >= running
	})
}

// TestMastersAgentsAndFrameworkFollowTheLeader runs 3 masters, 3 agents and
// a framework as processes on the C client: one leader (the lowest
// json.info_), agents and tasks follow it through a SIGKILL of the leader
// and through a leader that was stopped past its session timeout (it
// exits when it runs again, as Mesos does), with no task lost.
func TestMastersAgentsAndFrameworkFollowTheLeader(t *testing.T) {
	needZK(t)
	c := newCluster(t, 3, 2, 3, 6)
	zc := zkConn(t)

	leader := waitOneLeader(t, c.masters, 30*time.Second)
	checkLowestLeads(t, c, leader)
	c.waitSteady(t, 3, 6)
	replicas, _, err := zc.Children(c.path + "/log_replicas")
	if err != nil || len(replicas) != 3 {
		t.Fatalf("log_replicas: %v %v, want 3 members", replicas, err)
	}

	// A machine in the maintenance schedule is kept by the registry
	// through the change of leader.
	mustCall(t, 200, "POST", c.masters[leader].url()+"/master/maintenance/schedule", map[string]any{
		"windows": []any{map[string]any{"machine_ids": []any{map[string]string{"hostname": "agent3"}},
			"unavailability": map[string]any{"start": map[string]int64{"nanoseconds": time.Now().UnixNano()}}}}}, nil)

	// SIGKILL the leader: its json.info_ goes when its session expires
	// on the server, and the next lowest leads.
	oldNodes, _ := masterNodes(t, zc, c.path)
	c.masters[leader].signal(syscall.SIGKILL)
	c.masters[leader].waitExit(t, 5*time.Second)
	waitFor(t, 4*sessionTimeout, "the killed leader's json.info_ to go", func() bool {
		nodes, _ := masterNodes(t, zc, c.path)
		return len(nodes) == 2 && nodes[0] == oldNodes[1]
	})
	next := waitOneLeader(t, c.masters, 30*time.Second)
	checkLowestLeads(t, c, next)
	c.waitSteady(t, 3, 6)
	var status struct {
		Draining []struct{ Hostname string } `json:"draining_machines"`
	}
	mustCall(t, 200, "GET", c.masters[next].url()+"/master/maintenance/status", nil, &status)
	if len(status.Draining) != 1 || status.Draining[0].Hostname != "agent3" {
		t.Errorf("maintenance after the failover: %+v, want agent3 DRAINING (kept in the replicated registry)", status)
	}

	// The killed master comes back as a follower.
	back := c.startMaster(t, leader, c.masters[leader].port)
	waitFor(t, 30*time.Second, "3 log replicas again, the restarted master's among them", func() bool {
		r, _, _ := zc.Children(c.path + "/log_replicas")
		return len(r) == 3 && strings.Contains(back.out.String(), "log replica joined")
	})
	if back.exited() {
		t.Fatalf("the restarted master exited (its previous replica znode is the same replica):\n%s", back.out.String())
	}
	if l := waitOneLeader(t, c.masters, 30*time.Second); l != next {
		t.Fatalf("leader changed to master%d when master%d rejoined", l+1, leader+1)
	}

	// SIGSTOP the leader longer than its session timeout: the others
	// elect a new leader; on SIGCONT it finds its session expired and
	// exits, as a Mesos master does.
	stopped := c.masters[next]
	stopped.signal(syscall.SIGSTOP)
	waitFor(t, 30*time.Second, "a new leader while the old one is stopped", func() bool {
		lead, _ := leaders(c.masters)
		return len(lead) == 1 && lead[0] != next
	})
	time.Sleep(sessionTimeout) // stopped well past the session timeout
	stopped.signal(syscall.SIGCONT)
	if code := stopped.waitExit(t, 20*time.Second); code != 1 {
		t.Fatalf("stopped leader exited %d, want 1", code)
	}
	if out := stopped.out.String(); !strings.Contains(out, "Lost leadership... committing suicide!") ||
		!strings.Contains(out, "expire") {
		t.Errorf("stopped leader's last words do not say it lost its expired session:\n%s", tail(out, 8))
	}
	third := waitOneLeader(t, c.masters, 30*time.Second)
	checkLowestLeads(t, c, third)
	c.waitSteady(t, 3, 6)

	s := frameworkState(t, c.fw)
	if s.Failed != 0 || s.KilledByOthers != 0 {
		t.Errorf("framework saw %d tasks fail and %d killed by others across two leader changes; want 0: %+v",
			s.Failed, s.KilledByOthers, s)
	}
	if s.KilledByUs == 0 {
		t.Errorf("the framework killed no task: churn did not run: %+v", s)
	}
	seen := map[string]bool{}
	for _, h := range history(t, c.hist) {
		seen[h["state"].(string)] = true
	}
	for _, st := range []string{"TASK_STAGING", "TASK_STARTING", "TASK_RUNNING", "TASK_KILLED"} {
		if !seen[st] {
			t.Errorf("history has no %s transition: %v", st, seen)
		}
	}
}

// checkLowestLeads checks the leading master is the one whose json.info_
// has the lowest sequence.
func checkLowestLeads(t *testing.T, c *cluster, leader int) {
	t.Helper()
	zc := zkConn(t)
	waitFor(t, 10*time.Second, "the leader to own the lowest json.info_", func() bool {
		_, pids := masterNodes(t, zc, c.path)
		return len(pids) > 0 && pids[0] == fmt.Sprintf("master@127.0.0.1:%d", c.masters[leader].port)
	})
}

func tryV1(url, typ string, out any) bool {
	code, _, b, err := call("POST", url+"/api/v1", map[string]string{"type": typ})
	if err != nil || code != 200 {
		return false
	}
	return jsonInto(b, out) == nil
}
