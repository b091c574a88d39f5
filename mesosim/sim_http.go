package mesosim

import "net/http"

// The emulator's own calls between agents, frameworks and the leading
// master (Mesos uses libprocess messages; these carry the same content).

type registerRequest struct {
	Agent AgentInfo `json:"agent"`
	Tasks []Task    `json:"tasks"`
}

type agentRef struct {
	AgentID string `json:"agent_id"`
}

type statusRequest struct {
	AgentID string `json:"agent_id"`
	Task    Task   `json:"task"`
}

type subscribeRequest struct {
	FrameworkID string `json:"framework_id"`
	Name        string `json:"name"`
	Callback    string `json:"callback"` // http://ip:port of the framework
}

type frameworkRef struct {
	FrameworkID string `json:"framework_id"`
}

type launchRequest struct {
	FrameworkID string `json:"framework_id"`
	TaskID      string `json:"task_id"`
	Name        string `json:"name"`
}

func handleRegister(l *leader, w http.ResponseWriter, r *http.Request) {
	var req registerRequest
	if err := readJSON(r, &req); err != nil {
		httpError(w, http.StatusBadRequest, "%v", err)
		return
	}
	id, err := l.register(req.Agent, req.Tasks)
	if err != nil {
		answer(w, err)
		return
	}
	writeJSON(w, http.StatusOK, agentRef{AgentID: id})
}

func handleHeartbeat(l *leader, w http.ResponseWriter, r *http.Request) {
	var req agentRef
	if err := readJSON(r, &req); err != nil {
		httpError(w, http.StatusBadRequest, "%v", err)
		return
	}
	answer(w, l.heartbeat(req.AgentID))
}

func handleStatus(l *leader, w http.ResponseWriter, r *http.Request) {
	var req statusRequest
	if err := readJSON(r, &req); err != nil {
		httpError(w, http.StatusBadRequest, "%v", err)
		return
	}
	answer(w, l.status(req.AgentID, req.Task))
}

func handleSubscribe(l *leader, w http.ResponseWriter, r *http.Request) {
	var req subscribeRequest
	if err := readJSON(r, &req); err != nil {
		httpError(w, http.StatusBadRequest, "%v", err)
		return
	}
	writeJSON(w, http.StatusOK, frameworkRef{FrameworkID: l.subscribe(req.FrameworkID, req.Name, req.Callback)})
}

func handleLaunch(l *leader, w http.ResponseWriter, r *http.Request) {
	var req launchRequest
	if err := readJSON(r, &req); err != nil {
		httpError(w, http.StatusBadRequest, "%v", err)
		return
	}
	t, err := l.launch(req.FrameworkID, req.TaskID, req.Name)
	if err != nil {
		answer(w, err)
		return
	}
	writeJSON(w, http.StatusOK, t)
}

func handleKill(l *leader, w http.ResponseWriter, r *http.Request) {
	var req launchRequest
	if err := readJSON(r, &req); err != nil {
		httpError(w, http.StatusBadRequest, "%v", err)
		return
	}
	answer(w, l.kill(req.FrameworkID, req.TaskID))
}
