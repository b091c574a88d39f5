package mesosim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"
)

// Errors the leader's calls answer with (mapped to HTTP codes in http.go).
var (
	errUnknownAgent = errors.New("unknown agent: re-register")
	errNotFound     = errors.New("not found")
	errRefused      = errors.New("refused")
	errBadRequest   = errors.New("bad request")
	errNoAgent      = errors.New("no agent can take a task (none registered, or all draining, down or gone)")
)

// leader is the recovered leading master's state. Agents, frameworks and
// tasks live only here, in memory, rebuilt from agents and frameworks
// re-registering after a change of leader; the Registry (maintenance,
// drains, gone agents) is replicated through the log replicas.
type leader struct {
	m   *Master
	ctx context.Context
	wg  *sync.WaitGroup
	log *slog.Logger

	regMu sync.Mutex // serialises registry writes

	mu          sync.Mutex
	reg         Registry
	electedAt   time.Time
	agents      map[string]*agentEntry
	unreachable map[string]bool // removed for missed heartbeats
	frameworks  map[string]*frameworkEntry
	tasks       map[string]*Task // not terminal
	completed   []Task
	nextAgent   int
	nextFwk     int
}

type agentEntry struct {
	info       AgentInfo
	registered time.Time
	lastSeen   time.Time
	tasks      map[string]bool
}

type frameworkEntry struct {
	id, name, callback string
	active             bool
	queue              []StatusUpdate
	wake               chan struct{}
}

const maxCompleted = 1000

func newLeader(ctx context.Context, m *Master, wg *sync.WaitGroup, reg Registry) *leader {
	l := &leader{m: m, ctx: ctx, wg: wg, log: m.log, reg: reg, electedAt: time.Now(),
		agents: map[string]*agentEntry{}, unreachable: map[string]bool{},
		frameworks: map[string]*frameworkEntry{}, tasks: map[string]*Task{}}
	wg.Add(1)
	go func() { defer wg.Done(); l.checkAgents() }()
	return l
}

// updateRegistry applies f to a copy of the registry and stores it on a
// quorum of replicas; a store that fails is fatal, as in Mesos.
func (l *leader) updateRegistry(f func(*Registry) error) error {
	l.regMu.Lock()
	defer l.regMu.Unlock()
	l.mu.Lock()
	reg := l.reg.clone()
	l.mu.Unlock()
	if err := f(&reg); err != nil {
		return err
	}
	reg.Version++
	if err := l.m.registrar.store(l.ctx, reg, l.m.cfg.RegistryStoreTimeout); err != nil {
		err = fmt.Errorf("failed to update registry: %w", err)
		l.m.reportFatal(err)
		return err
	}
	l.mu.Lock()
	l.reg = reg
	l.mu.Unlock()
	return nil
}

// checkAgents removes agents that missed their heartbeats for
// agent_ping_timeout * max_agent_ping_timeouts: their tasks are LOST.
func (l *leader) checkAgents() {
	limit := l.m.cfg.AgentPingTimeout * time.Duration(l.m.cfg.MaxAgentPingTimeouts)
	t := time.NewTicker(limit / 10)
	defer t.Stop()
	for {
		select {
		case <-l.ctx.Done():
			return
		case now := <-t.C:
			l.mu.Lock()
			var dead []string
			for id, a := range l.agents {
				if now.Sub(a.lastSeen) > limit {
					dead = append(dead, id)
				}
			}
			for _, id := range dead {
				l.log.Warn("agent unreachable: no heartbeat; removing it, its tasks are LOST", "agent", id,
					"timeout", limit.String())
				l.removeAgentLocked(id, "REASON_AGENT_REMOVED", "agent unreachable: missed heartbeats")
				l.unreachable[id] = true
			}
			l.mu.Unlock()
		}
	}
}

// removeAgentLocked forgets an agent; its active tasks become LOST.
func (l *leader) removeAgentLocked(id, reason, msg string) {
	a := l.agents[id]
	if a == nil {
		return
	}
	for tid := range a.tasks {
		if t := l.tasks[tid]; t != nil {
			t.State, t.Reason, t.Message = TaskLost, reason, msg
			l.finishLocked(t, "SOURCE_MASTER")
		}
	}
	delete(l.agents, id)
}

// finishLocked records a task's new state and tells its framework.
func (l *leader) finishLocked(t *Task, source string) {
	if t.State.Terminal() {
		delete(l.tasks, t.ID)
		if a := l.agents[t.AgentID]; a != nil {
			delete(a.tasks, t.ID)
		}
		l.completed = append(l.completed, *t)
		if len(l.completed) > maxCompleted {
			l.completed = l.completed[len(l.completed)-maxCompleted:]
		}
	}
	l.enqueueLocked(StatusUpdate{Task: *t, Time: time.Now(), Source: source})
}

// register admits an agent (first time or re-registration with its tasks).
func (l *leader) register(info AgentInfo, tasks []Task) (string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, gone := l.reg.Gone[info.ID]; info.ID != "" && gone {
		return "", fmt.Errorf("%w: agent %s was marked gone by the operator and may not register again", errRefused, info.ID)
	}
	if mode := l.reg.machineMode(info); mode == ModeDown {
		return "", fmt.Errorf("%w: machine %s (%s) is DOWN for maintenance: bring it up first (POST /master/machine/up)",
			errRefused, info.Hostname, info.IP)
	}
	if info.ID == "" {
		info.ID = fmt.Sprintf("%s-S%d", l.m.info.ID, l.nextAgent)
		l.nextAgent++
	}
	now := time.Now()
	a := &agentEntry{info: info, registered: now, lastSeen: now, tasks: map[string]bool{}}
	if old := l.agents[info.ID]; old != nil {
		a.tasks = old.tasks
	}
	l.agents[info.ID] = a
	wasUnreachable := l.unreachable[info.ID]
	delete(l.unreachable, info.ID)
	for _, t := range tasks {
		if t.State.Terminal() {
			continue
		}
		if wasUnreachable {
			// Already reported LOST to a framework that is not
			// partition-aware: Mesos kills such tasks.
			l.killOnAgent(a.info, t.ID, "task was reported LOST while its agent was unreachable")
			continue
		}
		tc := t
		tc.AgentID = info.ID
		l.tasks[t.ID] = &tc
		a.tasks[t.ID] = true
		l.frameworkLocked(t.FrameworkID)
	}
	l.log.Info("agent registered", "agent", info.ID, "hostname", info.Hostname, "pid", info.PID, "tasks", len(a.tasks))
	if d, ok := l.reg.Draining[info.ID]; ok && d.State == ModeDraining {
		l.drainTasksLocked(a)
	}
	return info.ID, nil
}

func (l *leader) heartbeat(id string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	a := l.agents[id]
	if a == nil {
		return errUnknownAgent
	}
	a.lastSeen = time.Now()
	return nil
}

// snapshot copies what the operator endpoints show.
type snapshot struct {
	reg        Registry
	electedAt  time.Time
	agents     []agentEntry
	frameworks []frameworkEntry
	tasks      []Task
	completed  []Task
}

func (l *leader) snapshot() snapshot {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := snapshot{reg: l.reg.clone(), electedAt: l.electedAt, completed: append([]Task(nil), l.completed...)}
	for _, a := range l.agents {
		s.agents = append(s.agents, agentEntry{info: a.info, registered: a.registered, lastSeen: a.lastSeen,
			tasks: map[string]bool{}})
		for t := range a.tasks {
			s.agents[len(s.agents)-1].tasks[t] = true
		}
	}
	for _, f := range l.frameworks {
		s.frameworks = append(s.frameworks, frameworkEntry{id: f.id, name: f.name, active: f.active})
	}
	for _, t := range l.tasks {
		s.tasks = append(s.tasks, *t)
	}
	sort.Slice(s.agents, func(i, j int) bool { return s.agents[i].info.ID < s.agents[j].info.ID })
	sort.Slice(s.frameworks, func(i, j int) bool { return s.frameworks[i].id < s.frameworks[j].id })
	sort.Slice(s.tasks, func(i, j int) bool { return s.tasks[i].ID < s.tasks[j].ID })
	return s
}

func agentURL(a AgentInfo) string { return fmt.Sprintf("http://%s:%d", a.IP, a.Port) }
