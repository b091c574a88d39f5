package mesosim

import (
	"errors"
	"net/http"
	"time"
)

// mux is the master's HTTP API: Mesos' operator endpoints (leader only;
// other masters redirect with 307 to the leader as Mesos does), the
// emulator's own agent and framework calls under /sim/, and the log
// replica under /sim/log/.
func (m *Master) mux() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	mux.HandleFunc("GET /sim/log/read", m.replica.handleRead)
	mux.HandleFunc("POST /sim/log/write", m.replica.handleWrite)

	lead := func(pattern string, h func(*leader, http.ResponseWriter, *http.Request)) {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			l := m.current()
			if l == nil {
				m.redirect(w, r)
				return
			}
			h(l, w, r)
		})
	}
	lead("GET /master/redirect", func(l *leader, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Location", m.info.URL())
		w.WriteHeader(http.StatusTemporaryRedirect)
	})
	lead("GET /master/state", m.handleState)
	lead("GET /master/state.json", m.handleState)
	lead("GET /state", m.handleState)
	lead("GET /master/maintenance/schedule", func(l *leader, w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, l.snapshot().reg.Schedule)
	})
	lead("POST /master/maintenance/schedule", func(l *leader, w http.ResponseWriter, r *http.Request) {
		var s Schedule
		if err := readJSON(r, &s); err != nil {
			httpError(w, http.StatusBadRequest, "%v", err)
			return
		}
		answer(w, l.updateSchedule(s))
	})
	lead("GET /master/maintenance/status", func(l *leader, w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, maintenanceStatus(l.snapshot().reg))
	})
	lead("POST /master/machine/down", func(l *leader, w http.ResponseWriter, r *http.Request) {
		var ids []MachineID
		if err := readJSON(r, &ids); err != nil {
			httpError(w, http.StatusBadRequest, "%v", err)
			return
		}
		answer(w, l.machinesDown(ids))
	})
	lead("POST /master/machine/up", func(l *leader, w http.ResponseWriter, r *http.Request) {
		var ids []MachineID
		if err := readJSON(r, &ids); err != nil {
			httpError(w, http.StatusBadRequest, "%v", err)
			return
		}
		answer(w, l.machinesUp(ids))
	})
	lead("POST /api/v1", m.handleV1)
	lead("POST /sim/agent/register", handleRegister)
	lead("POST /sim/agent/heartbeat", handleHeartbeat)
	lead("POST /sim/agent/status", handleStatus)
	lead("POST /sim/framework/subscribe", handleSubscribe)
	lead("POST /sim/framework/launch", handleLaunch)
	lead("POST /sim/framework/kill", handleKill)
	return mux
}

// redirect answers a request a non-leading master cannot serve: 307 to the
// leader it detected, or 503 while there is none (or while this master,
// elected, is still recovering).
func (m *Master) redirect(w http.ResponseWriter, r *http.Request) {
	if m.elected() {
		httpError(w, http.StatusServiceUnavailable, "Master has not finished recovery")
		return
	}
	l := m.detector.Leader()
	if l == nil || l.ID == m.info.ID {
		httpError(w, http.StatusServiceUnavailable, "No leading master elected yet")
		return
	}
	w.Header().Set("Location", l.URL()+r.URL.RequestURI())
	w.WriteHeader(http.StatusTemporaryRedirect)
}

// answer maps a leader error to an HTTP answer (200 with no body on nil).
func answer(w http.ResponseWriter, err error) {
	switch {
	case err == nil:
		w.WriteHeader(http.StatusOK)
	case errors.Is(err, errBadRequest):
		httpError(w, http.StatusBadRequest, "%v", err)
	case errors.Is(err, errNotFound):
		httpError(w, http.StatusNotFound, "%v", err)
	case errors.Is(err, errUnknownAgent), errors.Is(err, errNoAgent):
		httpError(w, http.StatusConflict, "%v", err)
	case errors.Is(err, errRefused):
		httpError(w, http.StatusForbidden, "%v", err)
	default:
		httpError(w, http.StatusServiceUnavailable, "%v", err)
	}
}

func (m *Master) handleState(l *leader, w http.ResponseWriter, r *http.Request) {
	s := l.snapshot()
	type stateTask struct {
		ID          string    `json:"id"`
		Name        string    `json:"name"`
		FrameworkID string    `json:"framework_id"`
		SlaveID     string    `json:"slave_id"`
		State       TaskState `json:"state"`
	}
	type stateFramework struct {
		ID             string      `json:"id"`
		Name           string      `json:"name"`
		Active         bool        `json:"active"`
		Tasks          []stateTask `json:"tasks"`
		CompletedTasks []stateTask `json:"completed_tasks"`
	}
	type stateSlave struct {
		ID             string     `json:"id"`
		Hostname       string     `json:"hostname"`
		PID            string     `json:"pid"`
		Port           int        `json:"port"`
		Active         bool       `json:"active"`
		Deactivated    bool       `json:"deactivated"`
		RegisteredTime float64    `json:"registered_time"`
		DrainInfo      *DrainInfo `json:"drain_info,omitempty"`
	}
	out := struct {
		Version           string           `json:"version"`
		ID                string           `json:"id"`
		PID               string           `json:"pid"`
		Hostname          string           `json:"hostname"`
		Leader            string           `json:"leader"`
		LeaderInfo        MasterInfo       `json:"leader_info"`
		ElectedTime       float64          `json:"elected_time"`
		ActivatedSlaves   int              `json:"activated_slaves"`
		DeactivatedSlaves int              `json:"deactivated_slaves"`
		Slaves            []stateSlave     `json:"slaves"`
		Frameworks        []stateFramework `json:"frameworks"`
	}{Version: Version, ID: m.info.ID, PID: m.info.PID, Hostname: m.info.Hostname, Leader: m.info.PID,
		LeaderInfo: m.info, ElectedTime: seconds(s.electedAt), Slaves: []stateSlave{}, Frameworks: []stateFramework{}}
	for _, a := range s.agents {
		sl := stateSlave{ID: a.info.ID, Hostname: a.info.Hostname, PID: a.info.PID, Port: a.info.Port, Active: true,
			RegisteredTime: seconds(a.registered)}
		if d, ok := s.reg.Draining[a.info.ID]; ok {
			sl.Deactivated, sl.Active, sl.DrainInfo = true, false, &d
			out.DeactivatedSlaves++
		} else {
			out.ActivatedSlaves++
		}
		out.Slaves = append(out.Slaves, sl)
	}
	fidx := map[string]int{}
	for _, f := range s.frameworks {
		fidx[f.id] = len(out.Frameworks)
		out.Frameworks = append(out.Frameworks, stateFramework{ID: f.id, Name: f.name, Active: f.active,
			Tasks: []stateTask{}, CompletedTasks: []stateTask{}})
	}
	for _, t := range s.tasks {
		if i, ok := fidx[t.FrameworkID]; ok {
			out.Frameworks[i].Tasks = append(out.Frameworks[i].Tasks, stateTask{t.ID, t.Name, t.FrameworkID, t.AgentID, t.State})
		}
	}
	for _, t := range s.completed {
		if i, ok := fidx[t.FrameworkID]; ok {
			out.Frameworks[i].CompletedTasks = append(out.Frameworks[i].CompletedTasks,
				stateTask{t.ID, t.Name, t.FrameworkID, t.AgentID, t.State})
		}
	}
	writeJSON(w, http.StatusOK, out)
}

func seconds(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

// maintenanceStatus is GET /master/maintenance/status.
func maintenanceStatus(reg Registry) map[string][]MachineID {
	out := map[string][]MachineID{"draining_machines": {}, "down_machines": {}}
	for k, mode := range reg.Machines {
		if mode == ModeDown {
			out["down_machines"] = append(out["down_machines"], reg.MachineIDs[k])
		} else {
			out["draining_machines"] = append(out["draining_machines"], reg.MachineIDs[k])
		}
	}
	return out
}
