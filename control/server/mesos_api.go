package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// mesosAPI is a client of the Mesos masters' operator API (the v1 calls
// and the maintenance endpoints the phases need). Only the leading master
// answers; the others redirect (307) to it.
type mesosAPI struct {
	masters []string // every configured master's http://host:port
	client  *http.Client
}

func newMesosAPI(masters []string) *mesosAPI {
	return &mesosAPI{masters: masters, client: &http.Client{Timeout: 3 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

// errNoLeader: no configured master answers as the leader.
var errNoLeader = errors.New("no leading Mesos master")

// leaders returns the configured masters that answer /master/state
// themselves (200): exactly one while the cluster is healthy. Where the
// others redirect is in redirects (master URL -> leader URL).
func (a *mesosAPI) leaders(ctx context.Context) (lead []string, redirects map[string]string) {
	redirects = map[string]string{}
	for _, m := range a.masters {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, m+"/master/state", nil)
		resp, err := a.client.Do(req)
		if err != nil {
			continue
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusOK:
			lead = append(lead, m)
		case http.StatusTemporaryRedirect:
			redirects[m] = strings.TrimSuffix(resp.Header.Get("Location"), "/master/state")
		}
	}
	return lead, redirects
}

// leader returns the one leading master, or errNoLeader.
func (a *mesosAPI) leader(ctx context.Context) (string, error) {
	lead, _ := a.leaders(ctx)
	switch len(lead) {
	case 1:
		return lead[0], nil
	case 0:
		return "", fmt.Errorf("%w among %s", errNoLeader, strings.Join(a.masters, ", "))
	default:
		return "", fmt.Errorf("%d Mesos masters answer as leader: %s", len(lead), strings.Join(lead, ", "))
	}
}

// do sends a request to the leader and decodes a JSON answer into out.
func (a *mesosAPI) do(ctx context.Context, method, path string, body, out any) error {
	leader, err := a.leader(ctx)
	if err != nil {
		return err
	}
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, leader+path, r)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.client.Do(req)
	if err != nil {
		return fmt.Errorf("Mesos %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("Mesos %s %s%s: HTTP %d: %s", method, leader, path, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("Mesos %s %s: %w", method, path, err)
		}
	}
	return nil
}

// v1 sends an operator API call ({"type": typ, key: arg}).
func (a *mesosAPI) v1(ctx context.Context, typ string, arg map[string]any, out any) error {
	body := map[string]any{"type": typ}
	for k, v := range arg {
		body[k] = v
	}
	return a.do(ctx, http.MethodPost, "/api/v1", body, out)
}

type v1ID struct {
	Value string `json:"value"`
}

// mesosAgent is an agent of GET_AGENTS.
type mesosAgent struct {
	AgentInfo struct {
		ID       v1ID   `json:"id"`
		Hostname string `json:"hostname"`
		Port     int    `json:"port"`
	} `json:"agent_info"`
	Active    bool `json:"active"`
	DrainInfo *struct {
		State string `json:"state"`
	} `json:"drain_info"`
}

func (a *mesosAPI) agents(ctx context.Context) ([]mesosAgent, error) {
	var out struct {
		GetAgents struct {
			Agents []mesosAgent `json:"agents"`
		} `json:"get_agents"`
	}
	err := a.v1(ctx, "GET_AGENTS", nil, &out)
	return out.GetAgents.Agents, err
}

// mesosTask is a task of GET_TASKS.
type mesosTask struct {
	TaskID      v1ID   `json:"task_id"`
	FrameworkID v1ID   `json:"framework_id"`
	AgentID     v1ID   `json:"agent_id"`
	State       string `json:"state"`
}

// failed reports a state the framework did not ask for and must hear
// about (the task died or vanished).
func (t mesosTask) failed() bool {
	switch t.State {
	case "TASK_FAILED", "TASK_LOST", "TASK_ERROR", "TASK_DROPPED", "TASK_GONE", "TASK_UNREACHABLE", "TASK_GONE_BY_OPERATOR":
		return true
	}
	return false
}

func (a *mesosAPI) tasks(ctx context.Context) (active, completed []mesosTask, err error) {
	var out struct {
		GetTasks struct {
			Tasks          []mesosTask `json:"tasks"`
			CompletedTasks []mesosTask `json:"completed_tasks"`
		} `json:"get_tasks"`
	}
	err = a.v1(ctx, "GET_TASKS", nil, &out)
	return out.GetTasks.Tasks, out.GetTasks.CompletedTasks, err
}

// mesosFramework is a framework of GET_FRAMEWORKS.
type mesosFramework struct {
	FrameworkInfo struct {
		ID   v1ID   `json:"id"`
		Name string `json:"name"`
	} `json:"framework_info"`
	Active    bool `json:"active"`
	Connected bool `json:"connected"`
}

func (a *mesosAPI) frameworks(ctx context.Context) ([]mesosFramework, error) {
	var out struct {
		GetFrameworks struct {
			Frameworks []mesosFramework `json:"frameworks"`
		} `json:"get_frameworks"`
	}
	err := a.v1(ctx, "GET_FRAMEWORKS", nil, &out)
	return out.GetFrameworks.Frameworks, err
}

// machineID is Mesos' MachineID.
type machineID struct {
	Hostname string `json:"hostname,omitempty"`
	IP       string `json:"ip,omitempty"`
}

// schedule is Mesos' maintenance Schedule; windows are kept as they are.
type schedule struct {
	Windows []window `json:"windows"`
}

type window struct {
	MachineIDs     []machineID     `json:"machine_ids"`
	Unavailability json.RawMessage `json:"unavailability,omitempty"`
}

func (a *mesosAPI) schedule(ctx context.Context) (schedule, error) {
	var s schedule
	err := a.do(ctx, http.MethodGet, "/master/maintenance/schedule", nil, &s)
	return s, err
}

func (a *mesosAPI) setSchedule(ctx context.Context, s schedule) error {
	if s.Windows == nil {
		s.Windows = []window{}
	}
	return a.do(ctx, http.MethodPost, "/master/maintenance/schedule", s, nil)
}

// maintenanceStatus returns the machines DRAINING and DOWN.
func (a *mesosAPI) maintenanceStatus(ctx context.Context) (draining, down []machineID, err error) {
	var st struct {
		Draining []machineID `json:"draining_machines"`
		Down     []machineID `json:"down_machines"`
	}
	err = a.do(ctx, http.MethodGet, "/master/maintenance/status", nil, &st)
	return st.Draining, st.Down, err
}
