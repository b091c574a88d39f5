package mesosim_test

import (
	"fmt"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

// agentIDs maps hostname to agent id from GET_AGENTS, and the drain states.
func agentIDs(t *testing.T, master string) (ids, drain map[string]string) {
	t.Helper()
	var ag v1Agents
	mustCall(t, 200, "POST", master+"/api/v1", map[string]string{"type": "GET_AGENTS"}, &ag)
	ids, drain = map[string]string{}, map[string]string{}
	for _, a := range ag.GetAgents.Agents {
		ids[a.AgentInfo.Hostname] = a.AgentInfo.ID.Value
		if a.DrainInfo != nil {
			drain[a.AgentInfo.Hostname] = a.DrainInfo.State
		}
	}
	return ids, drain
}

// activeTasksOn counts GET_TASKS' active tasks per agent id.
func activeTasksOn(t *testing.T, master string) map[string]int {
	t.Helper()
	var ts v1Tasks
	mustCall(t, 200, "POST", master+"/api/v1", map[string]string{"type": "GET_TASKS"}, &ts)
	out := map[string]int{}
	for _, task := range ts.GetTasks.Tasks {
		out[task.AgentID.Value]++
	}
	return out
}

// TestOperatorAPI drives maintenance, drains and gone agents through the
// leader's operator API and checks what the framework's tasks went
// through: a drained agent's tasks move elsewhere with no failure, a
// machine can only go DOWN from the schedule and its agent may not come
// back until it is UP, and an agent that goes away undrained (marked gone
// or killed) loses its tasks.
func TestOperatorAPI(t *testing.T) {
	needZK(t)
	c := newCluster(t, 1, 1, 3, 6)
	m := c.leaderURL(t)
	c.waitSteady(t, 3, 6)

	var state struct {
		Leader     string `json:"leader"`
		Slaves     []struct{ Hostname string }
		Frameworks []struct {
			Tasks []struct{ State string }
		}
	}
	mustCall(t, 200, "GET", m+"/master/state", nil, &state)
	if len(state.Slaves) != 3 || len(state.Frameworks) != 1 || len(state.Frameworks[0].Tasks) < 6 ||
		state.Leader != fmt.Sprintf("master@127.0.0.1:%d", c.masters[0].port) {
		t.Fatalf("/master/state: %+v; want the leader, 3 agents, a framework with 6 tasks", state)
	}
	ids, _ := agentIDs(t, m)
	if on := activeTasksOn(t, m); on[ids["agent3"]] == 0 {
		t.Fatalf("agent3 runs no task before the drain: %v", on)
	}

	// A machine goes DOWN only from the schedule.
	code, _, body, _ := call("POST", m+"/master/machine/down", []map[string]string{{"hostname": "agent2"}})
	if code != http.StatusBadRequest || !strings.Contains(string(body), "DRAINING") {
		t.Fatalf("machine/down of an unscheduled machine: HTTP %d %s; want 400 saying it must be DRAINING", code, body)
	}
	// A window with a negative duration is refused, as Mesos does, by both
	// APIs, and nothing is scheduled.
	negative := map[string]any{"windows": []any{map[string]any{"machine_ids": []map[string]string{{"hostname": "agent2"}},
		"unavailability": map[string]any{"start": map[string]int64{"nanoseconds": time.Now().UnixNano()}, "duration": map[string]int64{"nanoseconds": -5}}}}}
	for _, c := range []struct {
		path string
		body any
	}{
		{"/master/maintenance/schedule", negative},
		{"/api/v1", map[string]any{"type": "UPDATE_MAINTENANCE_SCHEDULE", "update_maintenance_schedule": map[string]any{"schedule": negative}}},
	} {
		code, _, body, _ := call("POST", m+c.path, c.body)
		if code != http.StatusBadRequest || !strings.Contains(string(body), "Unavailability 'duration' is negative") {
			t.Fatalf("%s with a negative duration: HTTP %d %s; want 400 saying the duration is negative", c.path, code, body)
		}
	}
	var sched struct {
		Windows []any `json:"windows"`
	}
	mustCall(t, 200, "GET", m+"/master/maintenance/schedule", nil, &sched)
	if len(sched.Windows) != 0 {
		t.Fatalf("a refused schedule was kept: %+v", sched)
	}
	mustCall(t, 200, "POST", m+"/master/maintenance/schedule", map[string]any{"windows": []any{
		map[string]any{"machine_ids": []map[string]string{{"hostname": "agent3"}}}}}, nil)
	var status struct {
		Draining []struct{ Hostname string } `json:"draining_machines"`
	}
	mustCall(t, 200, "GET", m+"/master/maintenance/status", nil, &status)
	if len(status.Draining) != 1 || status.Draining[0].Hostname != "agent3" {
		t.Fatalf("maintenance status %+v; want agent3 draining", status)
	}

	// DRAIN_AGENT moves agent3's tasks: the framework relaunches them on
	// the other agents, none fails.
	mustCall(t, 200, "POST", m+"/api/v1", map[string]any{"type": "DRAIN_AGENT",
		"drain_agent": map[string]any{"agent_id": map[string]string{"value": ids["agent3"]}}}, nil)
	waitFor(t, 20*time.Second, "agent3 DRAINED and 6 tasks RUNNING elsewhere", func() bool {
		_, drain := agentIDs(t, m)
		on := activeTasksOn(t, m)
		s := frameworkState(t, c.fw)
		return drain["agent3"] == "DRAINED" && on[ids["agent3"]] == 0 && on[ids["agent1"]]+on[ids["agent2"]] >= 6 &&
			s.Active["TASK_RUNNING"] >= 6
	})
	if s := frameworkState(t, c.fw); s.Failed != 0 || s.KilledByOthers == 0 {
		t.Fatalf("after the drain: %+v; want tasks killed by the drain and none failed", s)
	}

	// machine/down: the drained agent is shut down (nothing to lose) and
	// may not register while its machine is DOWN.
	mustCall(t, 200, "POST", m+"/master/machine/down", []map[string]string{{"hostname": "agent3"}}, nil)
	if code := c.agents[2].waitExit(t, 10*time.Second); code != 0 {
		t.Fatalf("agent3 exited %d after machine/down; want 0 (shut down by the master)", code)
	}
	waitFor(t, 10*time.Second, "2 agents", func() bool { ids, _ := agentIDs(t, m); return len(ids) == 2 })
	again := restart(t, c.agents[2])
	if code := again.waitExit(t, 20*time.Second); code != 0 || !strings.Contains(again.out.String(), "DOWN for maintenance") {
		t.Fatalf("agent3 on a DOWN machine: exit %d, output:\n%s\nwant refused with the reason", code, tail(again.out.String(), 5))
	}
	mustCall(t, 200, "POST", m+"/master/machine/up", []map[string]string{{"hostname": "agent3"}}, nil)
	mustCall(t, 200, "GET", m+"/master/maintenance/status", nil, &status)
	if len(status.Draining) != 0 {
		t.Fatalf("maintenance status after machine/up: %+v", status)
	}
	c.agents[2] = restart(t, c.agents[2])
	waitFor(t, 20*time.Second, "agent3 registered again, same id", func() bool {
		now, _ := agentIDs(t, m)
		return len(now) == 3 && now["agent3"] == ids["agent3"]
	})
	mustCall(t, 200, "POST", m+"/api/v1", map[string]any{"type": "REACTIVATE_AGENT",
		"reactivate_agent": map[string]any{"agent_id": map[string]string{"value": ids["agent3"]}}}, nil)

	// MARK_AGENT_GONE on an agent running tasks: they are LOST, the agent
	// is shut down and may never register again.
	var lost int
	waitFor(t, 10*time.Second, "agent1 running tasks", func() bool { lost = activeTasksOn(t, m)[ids["agent1"]]; return lost > 0 })
	mustCall(t, 200, "POST", m+"/api/v1", map[string]any{"type": "MARK_AGENT_GONE",
		"mark_agent_gone": map[string]any{"agent_id": map[string]string{"value": ids["agent1"]}}}, nil)
	if code := c.agents[0].waitExit(t, 10*time.Second); code != 0 {
		t.Fatalf("agent1 exited %d after MARK_AGENT_GONE; want 0 (shut down)", code)
	}
	// The framework keeps killing tasks of its own: one of agent1's may have
	// ended KILLED between the count above and the call, so at least one
	// (not every one counted) must come back LOST.
	waitFor(t, 20*time.Second, "agent1's tasks LOST and 6 RUNNING again", func() bool {
		s := frameworkState(t, c.fw)
		return s.Failed >= 1 && s.Active["TASK_RUNNING"] >= 6
	})
	gone := restart(t, c.agents[0])
	if code := gone.waitExit(t, 20*time.Second); code != 0 || !strings.Contains(gone.out.String(), "marked gone") {
		t.Fatalf("a gone agent restarted: exit %d, output:\n%s\nwant refused", code, tail(gone.out.String(), 5))
	}

	// An agent that dies undrained: its tasks are LOST once it misses its
	// heartbeats, and the framework relaunches them.
	before := frameworkState(t, c.fw).Failed
	onAgent2 := activeTasksOn(t, m)[ids["agent2"]]
	c.agents[1].signal(syscall.SIGKILL)
	waitFor(t, 20*time.Second, "agent2's tasks LOST and relaunched on agent3", func() bool {
		s := frameworkState(t, c.fw)
		return s.Failed > before && activeTasksOn(t, m)[ids["agent3"]] >= 6 // (one may have ended KILLED first, as above)
	})
	reasons := map[string]int{}
	for _, h := range history(t, c.hist) {
		if h["state"] == "TASK_LOST" {
			reasons[fmt.Sprint(h["reason"])]++
		}
	}
	if reasons["REASON_AGENT_REMOVED_BY_OPERATOR"] < 1 || reasons["REASON_AGENT_REMOVED"] < 1 {
		t.Errorf("TASK_LOST reasons in the history: %v; want some removed by the operator (of %d) and some removed as unreachable (of %d)",
			reasons, lost, onAgent2)
	}

	code, _, body, _ = call("POST", m+"/api/v1", map[string]string{"type": "RESERVE_RESOURCES"})
	if code != http.StatusBadRequest || !strings.Contains(string(body), "not emulated") {
		t.Errorf("an unemulated call: HTTP %d %s; want 400 naming what is emulated", code, body)
	}
}
