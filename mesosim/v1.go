package mesosim

import (
	"encoding/json"
	"net/http"
)

// v1Value is the {"value": "..."} wrapper of Mesos' v1 ids.
type v1Value struct {
	Value string `json:"value"`
}

type v1Task struct {
	Name        string    `json:"name"`
	TaskID      v1Value   `json:"task_id"`
	FrameworkID v1Value   `json:"framework_id"`
	AgentID     v1Value   `json:"agent_id"`
	State       TaskState `json:"state"`
}

func toV1(t Task) v1Task {
	return v1Task{Name: t.Name, TaskID: v1Value{t.ID}, FrameworkID: v1Value{t.FrameworkID}, AgentID: v1Value{t.AgentID}, State: t.State}
}

// v1Call is the subset of mesos.master.Call the emulator answers.
type v1Call struct {
	Type       string `json:"type"`
	DrainAgent *struct {
		AgentID  v1Value `json:"agent_id"`
		MarkGone bool    `json:"mark_gone"`
	} `json:"drain_agent"`
	MarkAgentGone *struct {
		AgentID v1Value `json:"agent_id"`
	} `json:"mark_agent_gone"`
	ReactivateAgent *struct {
		AgentID v1Value `json:"agent_id"`
	} `json:"reactivate_agent"`
	UpdateMaintenanceSchedule *struct {
		Schedule Schedule `json:"schedule"`
	} `json:"update_maintenance_schedule"`
	StartMaintenance *struct {
		Machines []MachineID `json:"machines"`
	} `json:"start_maintenance"`
	StopMaintenance *struct {
		Machines []MachineID `json:"machines"`
	} `json:"stop_maintenance"`
}

// handleV1 is POST /api/v1 (JSON only).
func (m *Master) handleV1(l *leader, w http.ResponseWriter, r *http.Request) {
	var c v1Call
	if err := readJSON(r, &c); err != nil {
		httpError(w, http.StatusBadRequest, "Failed to parse body into Call protobuf: %v", err)
		return
	}
	switch c.Type {
	case "GET_AGENTS":
		s := l.snapshot()
		type v1Agent struct {
			AgentInfo struct {
				ID       v1Value `json:"id"`
				Hostname string  `json:"hostname"`
				Port     int     `json:"port"`
			} `json:"agent_info"`
			Active         bool   `json:"active"`
			Deactivated    bool   `json:"deactivated"`
			PID            string `json:"pid"`
			RegisteredTime struct {
				Nanoseconds int64 `json:"nanoseconds"`
			} `json:"registered_time"`
			DrainInfo *DrainInfo `json:"drain_info,omitempty"`
		}
		agents := []v1Agent{}
		for _, a := range s.agents {
			var va v1Agent
			va.AgentInfo.ID, va.AgentInfo.Hostname, va.AgentInfo.Port = v1Value{a.info.ID}, a.info.Hostname, a.info.Port
			va.Active, va.PID, va.RegisteredTime.Nanoseconds = true, a.info.PID, a.registered.UnixNano()
			if d, ok := s.reg.Draining[a.info.ID]; ok {
				va.Active, va.Deactivated, va.DrainInfo = false, true, &d
			}
			agents = append(agents, va)
		}
		writeJSON(w, http.StatusOK, map[string]any{"type": c.Type,
			"get_agents": map[string]any{"agents": agents, "recovered_agents": []any{}}})
	case "GET_TASKS":
		s := l.snapshot()
		tasks, completed := []v1Task{}, []v1Task{}
		for _, t := range s.tasks {
			tasks = append(tasks, toV1(t))
		}
		for _, t := range s.completed {
			completed = append(completed, toV1(t))
		}
		writeJSON(w, http.StatusOK, map[string]any{"type": c.Type,
			"get_tasks": map[string]any{"tasks": tasks, "completed_tasks": completed}})
	case "GET_FRAMEWORKS":
		s := l.snapshot()
		fws := []any{}
		for _, f := range s.frameworks {
			fws = append(fws, map[string]any{"framework_info": map[string]any{"id": v1Value{f.id}, "name": f.name},
				"active": f.active, "connected": f.active})
		}
		writeJSON(w, http.StatusOK, map[string]any{"type": c.Type, "get_frameworks": map[string]any{"frameworks": fws}})
	case "GET_MASTER":
		writeJSON(w, http.StatusOK, map[string]any{"type": c.Type, "get_master": map[string]any{"master_info": m.info}})
	case "GET_MAINTENANCE_SCHEDULE":
		writeJSON(w, http.StatusOK, map[string]any{"type": c.Type,
			"get_maintenance_schedule": map[string]any{"schedule": l.snapshot().reg.Schedule}})
	case "GET_MAINTENANCE_STATUS":
		writeJSON(w, http.StatusOK, map[string]any{"type": c.Type,
			"get_maintenance_status": map[string]any{"status": maintenanceStatus(l.snapshot().reg)}})
	case "DRAIN_AGENT":
		if c.DrainAgent == nil || c.DrainAgent.AgentID.Value == "" {
			httpError(w, http.StatusBadRequest, "Expecting 'drain_agent.agent_id' to be present")
			return
		}
		answer(w, l.drain(c.DrainAgent.AgentID.Value, c.DrainAgent.MarkGone))
	case "MARK_AGENT_GONE":
		if c.MarkAgentGone == nil || c.MarkAgentGone.AgentID.Value == "" {
			httpError(w, http.StatusBadRequest, "Expecting 'mark_agent_gone.agent_id' to be present")
			return
		}
		answer(w, l.markGone(c.MarkAgentGone.AgentID.Value))
	case "REACTIVATE_AGENT":
		if c.ReactivateAgent == nil || c.ReactivateAgent.AgentID.Value == "" {
			httpError(w, http.StatusBadRequest, "Expecting 'reactivate_agent.agent_id' to be present")
			return
		}
		answer(w, l.reactivate(c.ReactivateAgent.AgentID.Value))
	case "UPDATE_MAINTENANCE_SCHEDULE":
		if c.UpdateMaintenanceSchedule == nil {
			httpError(w, http.StatusBadRequest, "Expecting 'update_maintenance_schedule' to be present")
			return
		}
		answer(w, l.updateSchedule(c.UpdateMaintenanceSchedule.Schedule))
	case "START_MAINTENANCE":
		if c.StartMaintenance == nil {
			httpError(w, http.StatusBadRequest, "Expecting 'start_maintenance' to be present")
			return
		}
		answer(w, l.machinesDown(c.StartMaintenance.Machines))
	case "STOP_MAINTENANCE":
		if c.StopMaintenance == nil {
			httpError(w, http.StatusBadRequest, "Expecting 'stop_maintenance' to be present")
			return
		}
		answer(w, l.machinesUp(c.StopMaintenance.Machines))
	default:
		b, _ := json.Marshal(c.Type)
		httpError(w, http.StatusBadRequest, "call type %s is not emulated (supported: GET_AGENTS, GET_TASKS, GET_FRAMEWORKS, "+
			"GET_MASTER, GET_MAINTENANCE_SCHEDULE, GET_MAINTENANCE_STATUS, UPDATE_MAINTENANCE_SCHEDULE, START_MAINTENANCE, "+
			"STOP_MAINTENANCE, DRAIN_AGENT, REACTIVATE_AGENT, MARK_AGENT_GONE)", b)
	}
}
