package mesosim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"
)

// FrameworkConfig configures the emulated framework.
type FrameworkConfig struct {
	Master         ZKURL         // --master=zk://...
	SessionTimeout time.Duration // --zk_session_timeout (10s)
	Name           string
	IP             string
	Listener       net.Listener  // receives status updates
	Tasks          int           // tasks kept active
	Churn          time.Duration // one task killed and replaced every Churn (0: none)
	Reconcile      time.Duration // reconciliation against GET_TASKS (1s)
	History        io.Writer     // JSON lines, one per task state change
	Log            *slog.Logger
}

// Transition is one task state change the framework saw: a history line.
type Transition struct {
	Time        time.Time `json:"time"`
	FrameworkID string    `json:"framework_id"`
	TaskID      string    `json:"task_id"`
	AgentID     string    `json:"agent_id"`
	State       TaskState `json:"state"`
	Reason      string    `json:"reason,omitempty"`
	Message     string    `json:"message,omitempty"`
	Source      string    `json:"source"` // launch, SOURCE_AGENT, SOURCE_MASTER, reconcile
	// Expected is false for a terminal state the framework did not ask
	// for (LOST, FAILED, or KILLED by a drain).
	Expected bool `json:"expected"`
}

// FrameworkState is GET /state of the framework.
type FrameworkState struct {
	FrameworkID    string            `json:"framework_id"`
	Leader         string            `json:"leader"`
	Subscribed     bool              `json:"subscribed"`
	Active         map[TaskState]int `json:"active"`
	Launched       int               `json:"launched"`
	Transitions    int               `json:"transitions"`
	KilledByUs     int               `json:"killed_by_us"`
	KilledByOthers int               `json:"killed_by_others"` // drains
	Failed         int               `json:"failed"`           // LOST or FAILED
	Tasks          []Task            `json:"tasks"`
}

// Framework launches and kills tasks continuously through the leading
// master and records every task state change.
type Framework struct {
	cfg      FrameworkConfig
	log      *slog.Logger
	detector *Detector
	callback string
	prefix   string

	mu         sync.Mutex
	id         string
	leader     *MasterInfo
	subscribed bool
	tasks      map[string]*fwTask // not terminal
	seq        int
	state      FrameworkState
	history    io.Writer
}

type fwTask struct {
	Task
	killRequested bool      // once asked, a KILLED is ours even if the call failed
	killedAt      time.Time // when last asked
	launched      time.Time
}

// NewFramework checks cfg.
func NewFramework(cfg FrameworkConfig) (*Framework, error) {
	if cfg.Listener == nil {
		return nil, errors.New("mesosim: framework needs a listener")
	}
	if cfg.SessionTimeout == 0 {
		cfg.SessionTimeout = 10 * time.Second
	}
	if cfg.Reconcile == 0 {
		cfg.Reconcile = time.Second
	}
	if cfg.Name == "" {
		cfg.Name = "mesos-sim"
	}
	if cfg.History == nil {
		cfg.History = io.Discard
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	_, port, err := net.SplitHostPort(cfg.Listener.Addr().String())
	if err != nil {
		return nil, err
	}
	f := &Framework{cfg: cfg, log: cfg.Log.With("component", "framework"), tasks: map[string]*fwTask{},
		callback: "http://" + net.JoinHostPort(cfg.IP, port), prefix: newUUID()[:8], history: cfg.History}
	f.detector = NewDetector(cfg.Master, cfg.SessionTimeout, f.log.With("session", "detector"))
	return f, nil
}

// Run works until ctx ends.
func (f *Framework) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	srv := &http.Server{Handler: f.mux(), ReadHeaderTimeout: 5 * time.Second}
	defer func() {
		cancel()
		srv.Close()
		wg.Wait()
	}()
	wg.Add(2)
	go func() { defer wg.Done(); _ = srv.Serve(f.cfg.Listener) }()
	go func() { defer wg.Done(); f.detector.Run(ctx) }()
	f.log.Info("framework started", "name", f.cfg.Name, "tasks", f.cfg.Tasks, "churn", f.cfg.Churn.String())
	tick := time.NewTicker(2 * pollInterval)
	defer tick.Stop()
	var lastChurn, lastReconcile time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-f.detector.Changed():
			l := f.detector.Leader()
			f.mu.Lock()
			f.leader, f.subscribed = l, false
			f.mu.Unlock()
			if l != nil {
				f.log.Info("new leading master detected; re-subscribing", "leader", l.PID)
			}
		case now := <-tick.C:
			f.mu.Lock()
			l, sub := f.leader, f.subscribed
			f.mu.Unlock()
			if l == nil {
				continue
			}
			if !sub {
				f.subscribe(ctx, l)
				continue
			}
			if now.Sub(lastReconcile) >= f.cfg.Reconcile {
				lastReconcile = now
				f.reconcile(ctx, l)
			}
			if f.cfg.Churn > 0 && now.Sub(lastChurn) >= f.cfg.Churn {
				lastChurn = now
				f.churn(ctx, l)
			}
			f.fill(ctx, l)
		}
	}
}

func (f *Framework) subscribe(ctx context.Context, l *MasterInfo) {
	f.mu.Lock()
	req := subscribeRequest{FrameworkID: f.id, Name: f.cfg.Name, Callback: f.callback}
	f.mu.Unlock()
	var ref frameworkRef
	if err := postJSON(ctx, l.URL()+"/sim/framework/subscribe", req, &ref); err != nil {
		f.log.Warn("subscribe failed; retrying", "leader", l.PID, "err", err.Error())
		return
	}
	f.mu.Lock()
	f.id, f.state.FrameworkID = ref.FrameworkID, ref.FrameworkID
	if f.leader == l {
		f.subscribed = true
	}
	f.mu.Unlock()
	f.log.Info("subscribed", "framework", ref.FrameworkID, "leader", l.PID)
	f.reconcile(ctx, l)
}

// fill launches tasks until Tasks are active.
func (f *Framework) fill(ctx context.Context, l *MasterInfo) {
	for {
		f.mu.Lock()
		if len(f.tasks) >= f.cfg.Tasks {
			f.mu.Unlock()
			return
		}
		f.seq++
		req := launchRequest{FrameworkID: f.id, TaskID: fmt.Sprintf("%s-task-%d", f.prefix, f.seq), Name: "sleep"}
		// In the table before the call: its first status update may arrive
		// before the answer.
		f.tasks[req.TaskID] = &fwTask{Task: Task{ID: req.TaskID, FrameworkID: req.FrameworkID}, launched: time.Now()}
		f.mu.Unlock()
		var t Task
		err := postJSON(ctx, l.URL()+"/sim/framework/launch", req, &t)
		f.mu.Lock()
		if err != nil {
			delete(f.tasks, req.TaskID) // never launched
			f.mu.Unlock()
			var se *statusError
			if !errors.As(err, &se) || se.Code != http.StatusConflict {
				f.log.Warn("launch failed", "task", req.TaskID, "err", err.Error())
			}
			return
		}
		f.state.Launched++
		if cur := f.tasks[t.ID]; cur != nil && cur.State == "" {
			f.recordLocked(t, "launch")
		}
		f.mu.Unlock()
	}
}

// churn kills the oldest RUNNING task (fill replaces it). A kill whose
// answer was lost may still have happened: the task stays marked as
// killed by us, and the kill is asked again after killRetry.
func (f *Framework) churn(ctx context.Context, l *MasterInfo) {
	const killRetry = 5 * time.Second
	now := time.Now()
	f.mu.Lock()
	var oldest *fwTask
	for _, t := range f.tasks {
		if t.State == TaskRunning && (!t.killRequested || now.Sub(t.killedAt) > killRetry) &&
			(oldest == nil || t.launched.Before(oldest.launched)) {
			oldest = t
		}
	}
	if oldest == nil {
		f.mu.Unlock()
		return
	}
	oldest.killRequested, oldest.killedAt = true, now
	req := launchRequest{FrameworkID: f.id, TaskID: oldest.ID}
	f.mu.Unlock()
	if err := postJSON(ctx, l.URL()+"/sim/framework/kill", req, nil); err != nil {
		f.log.Warn("kill failed; will retry", "task", req.TaskID, "err", err.Error())
	}
}

// reconcile compares its tasks with the master's GET_TASKS.
func (f *Framework) reconcile(ctx context.Context, l *MasterInfo) {
	var resp struct {
		GetTasks struct {
			Tasks          []v1Task `json:"tasks"`
			CompletedTasks []v1Task `json:"completed_tasks"`
		} `json:"get_tasks"`
	}
	if err := postJSON(ctx, l.URL()+"/api/v1", map[string]string{"type": "GET_TASKS"}, &resp); err != nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, list := range [][]v1Task{resp.GetTasks.Tasks, resp.GetTasks.CompletedTasks} {
		for _, vt := range list {
			if vt.FrameworkID.Value != f.id {
				continue
			}
			if t := f.tasks[vt.TaskID.Value]; t != nil && t.State != vt.State {
				f.recordLocked(Task{ID: vt.TaskID.Value, FrameworkID: vt.FrameworkID.Value, AgentID: vt.AgentID.Value,
					State: vt.State, Name: vt.Name}, "reconcile")
			}
		}
	}
}

// recordLocked applies a state change, once.
func (f *Framework) recordLocked(t Task, source string) {
	cur := f.tasks[t.ID]
	if cur == nil || cur.State == t.State {
		return // unknown (ended already, or another framework's) or a duplicate
	}
	cur.State, cur.AgentID, cur.Reason, cur.Message = t.State, t.AgentID, t.Reason, t.Message
	tr := Transition{Time: time.Now(), FrameworkID: f.id, TaskID: t.ID, AgentID: t.AgentID, State: t.State,
		Reason: t.Reason, Message: t.Message, Source: source, Expected: true}
	f.state.Transitions++
	if t.State.Terminal() {
		delete(f.tasks, t.ID)
		switch {
		case t.State == TaskKilled && cur.killRequested:
			f.state.KilledByUs++
		case t.State == TaskKilled:
			tr.Expected = false
			f.state.KilledByOthers++
			f.log.Warn("task killed by someone else (drain); relaunching", "task", t.ID, "agent", t.AgentID, "message", t.Message)
		default:
			tr.Expected = false
			f.state.Failed++
			f.log.Error("task failed", "task", t.ID, "state", string(t.State), "agent", t.AgentID, "reason", t.Reason,
				"message", t.Message)
		}
	}
	b, _ := json.Marshal(tr)
	_, _ = f.history.Write(append(b, '\n'))
}

func (f *Framework) mux() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /sim/update", func(w http.ResponseWriter, r *http.Request) {
		var u StatusUpdate
		if err := readJSON(r, &u); err != nil {
			httpError(w, http.StatusBadRequest, "%v", err)
			return
		}
		f.mu.Lock()
		f.recordLocked(u.Task, u.Source)
		f.mu.Unlock()
		w.WriteHeader(http.StatusOK)
	})
	mux.HandleFunc("GET /state", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		s := f.state
		s.Subscribed = f.subscribed
		if f.leader != nil {
			s.Leader = f.leader.PID
		}
		s.Active = map[TaskState]int{}
		s.Tasks = []Task{}
		for _, t := range f.tasks {
			s.Active[t.State]++
			s.Tasks = append(s.Tasks, t.Task)
		}
		f.mu.Unlock()
		sort.Slice(s.Tasks, func(i, j int) bool { return strings.Compare(s.Tasks[i].ID, s.Tasks[j].ID) < 0 })
		writeJSON(w, http.StatusOK, s)
	})
	return mux
}
