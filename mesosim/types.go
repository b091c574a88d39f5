package mesosim

import (
	"encoding/json"
	"time"
)

// TaskState is a Mesos task state (the protobuf enum's name).
type TaskState string

// The task states the emulator models.
const (
	TaskStaging  TaskState = "TASK_STAGING"
	TaskStarting TaskState = "TASK_STARTING"
	TaskRunning  TaskState = "TASK_RUNNING"
	TaskKilled   TaskState = "TASK_KILLED"
	TaskFailed   TaskState = "TASK_FAILED"
	TaskLost     TaskState = "TASK_LOST"
)

// Terminal reports whether no further state follows.
func (s TaskState) Terminal() bool { return s == TaskKilled || s == TaskFailed || s == TaskLost }

// Task is a task as the master and the agents track it.
type Task struct {
	ID          string    `json:"id"`
	Name        string    `json:"name"`
	FrameworkID string    `json:"framework_id"`
	AgentID     string    `json:"agent_id"`
	State       TaskState `json:"state"`
	Reason      string    `json:"reason,omitempty"`
	Message     string    `json:"message,omitempty"`
}

// AgentInfo is what an agent registers with.
type AgentInfo struct {
	ID       string `json:"id"`
	Hostname string `json:"hostname"`
	IP       string `json:"ip"`
	Port     int    `json:"port"`
	PID      string `json:"pid"`
}

// MachineID names a machine in maintenance calls, as Mesos' MachineID.
type MachineID struct {
	Hostname string `json:"hostname,omitempty"`
	IP       string `json:"ip,omitempty"`
}

// matches reports whether agent a runs on machine m (every field m sets
// must match).
func (m MachineID) matches(a AgentInfo) bool {
	return (m.Hostname != "" || m.IP != "") &&
		(m.Hostname == "" || m.Hostname == a.Hostname) && (m.IP == "" || m.IP == a.IP)
}

func (m MachineID) key() string { return m.Hostname + "/" + m.IP }

// Window is one maintenance window of a Schedule.
type Window struct {
	MachineIDs     []MachineID     `json:"machine_ids"`
	Unavailability json.RawMessage `json:"unavailability,omitempty"`
}

// Schedule is the body of POST /master/maintenance/schedule.
type Schedule struct {
	Windows []Window `json:"windows"`
}

// Machine modes.
const (
	ModeDraining = "DRAINING"
	ModeDown     = "DOWN"
)

// DrainInfo is an agent's drain state (DRAIN_AGENT).
type DrainInfo struct {
	State    string `json:"state"` // DRAINING, DRAINED
	MarkGone bool   `json:"mark_gone,omitempty"`
}

// Registry is what the leading master keeps in the replicated log: the
// state that must survive a change of leader (agents and tasks are rebuilt
// from the agents re-registering, see SPEC.md).
type Registry struct {
	Version    int64                `json:"version"`
	Schedule   Schedule             `json:"schedule"`
	Machines   map[string]string    `json:"machines"` // MachineID.key() -> DRAINING, DOWN
	MachineIDs map[string]MachineID `json:"machine_ids"`
	Draining   map[string]DrainInfo `json:"draining"` // agent id
	Gone       map[string]time.Time `json:"gone"`     // agent id
}

func (r *Registry) init() {
	if r.Machines == nil {
		r.Machines = map[string]string{}
	}
	if r.MachineIDs == nil {
		r.MachineIDs = map[string]MachineID{}
	}
	if r.Draining == nil {
		r.Draining = map[string]DrainInfo{}
	}
	if r.Gone == nil {
		r.Gone = map[string]time.Time{}
	}
}

// clone deep-copies r through JSON (small, and only on writes).
func (r Registry) clone() Registry {
	b, _ := json.Marshal(r)
	var c Registry
	_ = json.Unmarshal(b, &c)
	c.init()
	return c
}

// machineMode is the maintenance mode of the machine agent a runs on
// ("" when UP).
func (r *Registry) machineMode(a AgentInfo) string {
	for k, id := range r.MachineIDs {
		if id.matches(a) {
			return r.Machines[k]
		}
	}
	return ""
}

// StatusUpdate is what an agent or the master reports about a task and
// what the framework receives.
type StatusUpdate struct {
	Task   Task      `json:"task"`
	Time   time.Time `json:"time"`
	Source string    `json:"source"` // SOURCE_AGENT, SOURCE_MASTER
}
