package mesosim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ErrShutdown means the master told the process to shut down (machine
// DOWN, agent marked gone); the command exits 0 after logging why.
var ErrShutdown = errors.New("mesosim: shut down by the master")

// AgentConfig configures an agent.
type AgentConfig struct {
	Master         ZKURL         // --master=zk://...
	SessionTimeout time.Duration // --zk_session_timeout (10s)
	Hostname       string
	IP             string
	Listener       net.Listener
	WorkDir        string        // keeps the agent id across restarts, when set
	Heartbeat      time.Duration // heartbeat interval (1s)
	Log            *slog.Logger
}

// Agent is one emulated Mesos agent: it follows the leading master through
// ZooKeeper, (re-)registers with every new leader, carrying its tasks, and
// runs the tasks it is given (no processes: state only).
type Agent struct {
	cfg      AgentConfig
	log      *slog.Logger
	detector *Detector
	info     AgentInfo
	shutdown chan string
	wake     chan struct{}

	mu         sync.Mutex
	leader     *MasterInfo
	registered bool
	tasks      map[string]*agentTask
	pending    []Task // status updates not yet taken by a master, in order
}

type agentTask struct {
	Task
	since time.Time
}

// startDelay is how long a task stays STARTING before RUNNING.
const startDelay = 50 * time.Millisecond

// NewAgent checks cfg.
func NewAgent(cfg AgentConfig) (*Agent, error) {
	if cfg.Listener == nil {
		return nil, errors.New("mesosim: agent needs a listener")
	}
	if cfg.SessionTimeout == 0 {
		cfg.SessionTimeout = 10 * time.Second
	}
	if cfg.Heartbeat == 0 {
		cfg.Heartbeat = time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	_, port, err := net.SplitHostPort(cfg.Listener.Addr().String())
	if err != nil {
		return nil, err
	}
	p, _ := strconv.Atoi(port)
	if cfg.Hostname == "" {
		cfg.Hostname = cfg.IP
	}
	a := &Agent{cfg: cfg, log: cfg.Log.With("component", "agent"), shutdown: make(chan string, 1),
		wake: make(chan struct{}, 1), tasks: map[string]*agentTask{},
		info: AgentInfo{Hostname: cfg.Hostname, IP: cfg.IP, Port: p, PID: fmt.Sprintf("slave(1)@%s:%d", cfg.IP, p)}}
	if cfg.WorkDir != "" {
		if b, err := os.ReadFile(filepath.Join(cfg.WorkDir, "agent.id")); err == nil {
			a.info.ID = strings.TrimSpace(string(b))
		}
	}
	a.detector = NewDetector(cfg.Master, cfg.SessionTimeout, a.log.With("session", "detector"))
	return a, nil
}

// Run serves until ctx ends (nil) or the master shuts the agent down
// (ErrShutdown).
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	srv := &http.Server{Handler: a.mux(), ReadHeaderTimeout: 5 * time.Second}
	defer func() {
		cancel()
		srv.Close()
		wg.Wait()
	}()
	wg.Add(3)
	go func() { defer wg.Done(); _ = srv.Serve(a.cfg.Listener) }()
	go func() { defer wg.Done(); a.detector.Run(ctx) }()
	go func() { defer wg.Done(); a.sendUpdates(ctx) }()
	a.log.Info("agent started", "hostname", a.info.Hostname, "pid", a.info.PID, "master", a.cfg.Master.String())
	beat := time.NewTicker(a.cfg.Heartbeat)
	defer beat.Stop()
	tasks := time.NewTicker(startDelay)
	defer tasks.Stop()
	for {
		select {
		case <-ctx.Done():
			a.log.Info("agent shutting down")
			return nil
		case reason := <-a.shutdown:
			a.log.Warn("Agent asked to shut down by the master", "reason", reason)
			return fmt.Errorf("%w: %s", ErrShutdown, reason)
		case <-a.detector.Changed():
			l := a.detector.Leader()
			a.mu.Lock()
			a.leader, a.registered = l, false
			a.mu.Unlock()
			if l != nil {
				a.log.Info("new leading master detected; re-registering", "leader", l.PID)
				a.register(ctx)
			}
		case <-beat.C:
			a.mu.Lock()
			l, reg, id := a.leader, a.registered, a.info.ID
			a.mu.Unlock()
			switch {
			case l == nil:
			case !reg:
				a.register(ctx)
			default:
				err := postJSON(ctx, l.URL()+"/sim/agent/heartbeat", agentRef{AgentID: id}, nil)
				var se *statusError
				if errors.As(err, &se) && se.Code == http.StatusConflict {
					a.log.Warn("the master does not know this agent; re-registering", "leader", l.PID)
					a.register(ctx)
				}
			}
		case now := <-tasks.C:
			a.startTasks(now)
		}
	}
}

// register (re-)registers with the current leader, carrying the tasks.
func (a *Agent) register(ctx context.Context) {
	a.mu.Lock()
	l := a.leader
	req := registerRequest{Agent: a.info}
	for _, t := range a.tasks {
		req.Tasks = append(req.Tasks, t.Task)
	}
	a.mu.Unlock()
	if l == nil {
		return
	}
	var ref agentRef
	err := postJSON(ctx, l.URL()+"/sim/agent/register", req, &ref)
	var se *statusError
	if errors.As(err, &se) && se.Code == http.StatusForbidden {
		select {
		case a.shutdown <- "registration refused: " + se.Body:
		default:
		}
		return
	}
	if err != nil {
		a.log.Warn("registration failed; retrying", "leader", l.PID, "err", err.Error())
		return
	}
	a.mu.Lock()
	first := a.info.ID == ""
	a.info.ID = ref.AgentID
	if a.leader == l {
		a.registered = true
	}
	for _, t := range a.tasks {
		t.AgentID = ref.AgentID
	}
	a.mu.Unlock()
	if first && a.cfg.WorkDir != "" {
		if err := os.WriteFile(filepath.Join(a.cfg.WorkDir, "agent.id"), []byte(ref.AgentID+"\n"), 0o644); err != nil {
			a.log.Warn("cannot keep the agent id in --work_dir", "err", err.Error())
		}
	}
	a.log.Info("registered with the master", "agent", ref.AgentID, "leader", l.PID, "tasks", len(req.Tasks))
	a.signal()
}

func (a *Agent) signal() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// updateLocked changes a task's state and queues the status update.
func (a *Agent) updateLocked(t *agentTask, s TaskState, msg string) {
	t.State, t.Message, t.since = s, msg, time.Now()
	a.pending = append(a.pending, t.Task)
	if s.Terminal() {
		delete(a.tasks, t.ID)
	}
	a.signal()
}

func (a *Agent) startTasks(now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, t := range a.tasks {
		if t.State == TaskStarting && now.Sub(t.since) >= startDelay {
			a.updateLocked(t, TaskRunning, "")
		}
	}
}

// sendUpdates delivers status updates in order to the leader, retrying
// (across leaders) until one takes each, as the agent's status update
// manager does.
func (a *Agent) sendUpdates(ctx context.Context) {
	for {
		a.mu.Lock()
		l, reg := a.leader, a.registered
		var u *statusRequest
		if len(a.pending) > 0 && l != nil && reg {
			u = &statusRequest{AgentID: a.info.ID, Task: a.pending[0]}
		}
		a.mu.Unlock()
		if u == nil {
			select {
			case <-ctx.Done():
				return
			case <-a.wake:
			}
			continue
		}
		err := postJSON(ctx, l.URL()+"/sim/agent/status", u, nil)
		a.mu.Lock()
		if err == nil {
			a.pending = a.pending[1:]
		} else {
			var se *statusError
			if errors.As(err, &se) && se.Code == http.StatusConflict && a.leader == l {
				a.registered = false
			}
		}
		a.mu.Unlock()
		if err != nil {
			select {
			case <-ctx.Done():
				return
			case <-time.After(2 * pollInterval):
			}
		}
	}
}

func (a *Agent) mux() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	mux.HandleFunc("POST /sim/run", func(w http.ResponseWriter, r *http.Request) {
		var t Task
		if err := readJSON(r, &t); err != nil {
			httpError(w, http.StatusBadRequest, "%v", err)
			return
		}
		a.mu.Lock()
		defer a.mu.Unlock()
		if _, ok := a.tasks[t.ID]; ok {
			w.WriteHeader(http.StatusOK)
			return
		}
		at := &agentTask{Task: t}
		a.tasks[t.ID] = at
		a.updateLocked(at, TaskStarting, "")
		w.WriteHeader(http.StatusOK)
	})
	mux.HandleFunc("POST /sim/kill", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			TaskID  string `json:"task_id"`
			Message string `json:"message"`
		}
		if err := readJSON(r, &req); err != nil {
			httpError(w, http.StatusBadRequest, "%v", err)
			return
		}
		a.mu.Lock()
		defer a.mu.Unlock()
		t := a.tasks[req.TaskID]
		if t == nil {
			httpError(w, http.StatusNotFound, "task %s is not running here", req.TaskID)
			return
		}
		a.updateLocked(t, TaskKilled, req.Message)
		w.WriteHeader(http.StatusOK)
	})
	mux.HandleFunc("POST /sim/shutdown", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Reason string `json:"reason"`
		}
		_ = readJSON(r, &req)
		select {
		case a.shutdown <- req.Reason:
		default:
		}
		w.WriteHeader(http.StatusOK)
	})
	mux.HandleFunc("GET /state", func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		defer a.mu.Unlock()
		out := struct {
			ID         string `json:"id"`
			Leader     string `json:"leader"`
			Registered bool   `json:"registered"`
			Tasks      []Task `json:"tasks"`
		}{ID: a.info.ID, Registered: a.registered, Tasks: []Task{}}
		if a.leader != nil {
			out.Leader = a.leader.PID
		}
		for _, t := range a.tasks {
			out.Tasks = append(out.Tasks, t.Task)
		}
		writeJSON(w, http.StatusOK, out)
	})
	return mux
}
