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

// framework returns the entry for id, creating it (inactive) for tasks
// that agents report before their framework re-subscribed.
func (l *leader) frameworkLocked(id string) *frameworkEntry {
	f := l.frameworks[id]
	if f == nil {
		f = &frameworkEntry{id: id, wake: make(chan struct{}, 1)}
		l.frameworks[id] = f
		l.wg.Add(1)
		go func() { defer l.wg.Done(); l.deliver(f) }()
	}
	return f
}

func (l *leader) enqueueLocked(u StatusUpdate) {
	f := l.frameworkLocked(u.Task.FrameworkID)
	f.queue = append(f.queue, u)
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// deliver sends f's status updates in order to its callback, retrying
// until the framework takes each one.
func (l *leader) deliver(f *frameworkEntry) {
	for {
		l.mu.Lock()
		var u *StatusUpdate
		cb := f.callback
		if len(f.queue) > 0 && cb != "" {
			u = &f.queue[0]
		}
		l.mu.Unlock()
		if u != nil {
			if err := postJSON(l.ctx, cb+"/sim/update", u, nil); err == nil {
				l.mu.Lock()
				f.queue = f.queue[1:]
				l.mu.Unlock()
				continue
			}
			select {
			case <-l.ctx.Done():
				return
			case <-time.After(2 * pollInterval):
			}
			continue
		}
		select {
		case <-l.ctx.Done():
			return
		case <-f.wake:
		}
	}
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

// status applies an agent's status update.
func (l *leader) status(agentID string, t Task) error {
	l.mu.Lock()
	a := l.agents[agentID]
	if a == nil {
		l.mu.Unlock()
		return errUnknownAgent
	}
	a.lastSeen = time.Now()
	cur := l.tasks[t.ID]
	if cur == nil {
		if t.State.Terminal() {
			// Not active here (launched under an earlier leader and not yet
			// reported, or already ended): still forward it.
			l.enqueueLocked(StatusUpdate{Task: t, Time: time.Now(), Source: "SOURCE_AGENT"})
			l.mu.Unlock()
			l.checkDrained(agentID)
			return nil
		}
		tc := t
		cur = &tc
		l.tasks[t.ID] = cur
		a.tasks[t.ID] = true
	}
	cur.State, cur.Reason, cur.Message, cur.AgentID = t.State, t.Reason, t.Message, agentID
	l.finishLocked(cur, "SOURCE_AGENT")
	l.mu.Unlock()
	if t.State.Terminal() {
		l.checkDrained(agentID)
	}
	return nil
}

// checkDrained marks a draining agent DRAINED once it runs no task, and
// gone if the drain asked for it.
func (l *leader) checkDrained(id string) {
	l.mu.Lock()
	d, draining := l.reg.Draining[id]
	a := l.agents[id]
	empty := a == nil || len(a.tasks) == 0
	l.mu.Unlock()
	if !draining || d.State != ModeDraining || !empty {
		return
	}
	err := l.updateRegistry(func(r *Registry) error {
		r.Draining[id] = DrainInfo{State: "DRAINED", MarkGone: d.MarkGone}
		return nil
	})
	if err != nil {
		return
	}
	l.log.Info("agent drained", "agent", id)
	if d.MarkGone {
		_ = l.markGone(id)
	}
}

// subscribe registers or re-registers a framework.
func (l *leader) subscribe(id, name, callback string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if id == "" {
		id = fmt.Sprintf("%s-%04d", l.m.info.ID, l.nextFwk)
		l.nextFwk++
	}
	f := l.frameworkLocked(id)
	f.name, f.callback, f.active = name, callback, true
	select {
	case f.wake <- struct{}{}:
	default:
	}
	l.log.Info("framework subscribed", "framework", id, "name", name)
	return id
}

// launch places a task on the eligible agent running the fewest tasks
// (the emulator's stand-in for offers) and sends it there.
func (l *leader) launch(fid, tid, name string) (Task, error) {
	l.mu.Lock()
	if l.frameworks[fid] == nil || !l.frameworks[fid].active {
		l.mu.Unlock()
		return Task{}, fmt.Errorf("%w: framework %s is not subscribed", errRefused, fid)
	}
	if l.tasks[tid] != nil {
		l.mu.Unlock()
		return Task{}, fmt.Errorf("%w: task %s exists", errBadRequest, tid)
	}
	var best *agentEntry
	for _, a := range l.agents {
		if !l.eligibleLocked(a) {
			continue
		}
		if best == nil || len(a.tasks) < len(best.tasks) || len(a.tasks) == len(best.tasks) && a.info.ID < best.info.ID {
			best = a
		}
	}
	if best == nil {
		l.mu.Unlock()
		return Task{}, errNoAgent
	}
	t := &Task{ID: tid, Name: name, FrameworkID: fid, AgentID: best.info.ID, State: TaskStaging}
	l.tasks[tid] = t
	best.tasks[tid] = true
	info := best.info
	out := *t
	l.mu.Unlock()
	if err := postJSON(l.ctx, agentURL(info)+"/sim/run", out, nil); err != nil {
		l.mu.Lock()
		if cur := l.tasks[tid]; cur != nil && cur.State == TaskStaging {
			cur.State, cur.Reason, cur.Message = TaskFailed, "REASON_AGENT_UNREACHABLE", "agent did not take the task: "+err.Error()
			l.finishLocked(cur, "SOURCE_MASTER")
			// It may have arrived with only the answer lost: no orphan.
			l.killOnAgent(info, tid, "launch reported FAILED")
		}
		l.mu.Unlock()
	}
	return out, nil
}

func (l *leader) eligibleLocked(a *agentEntry) bool {
	if _, d := l.reg.Draining[a.info.ID]; d {
		return false
	}
	return l.reg.machineMode(a.info) != ModeDown
}

// kill asks the agent running a task to kill it.
func (l *leader) kill(fid, tid string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	t := l.tasks[tid]
	if t == nil || t.FrameworkID != fid {
		return fmt.Errorf("%w: task %s is not active on this master (its agent may not have re-registered yet)", errNotFound, tid)
	}
	a := l.agents[t.AgentID]
	if a == nil {
		return fmt.Errorf("%w: agent %s of task %s is not registered", errNotFound, t.AgentID, tid)
	}
	l.killOnAgent(a.info, tid, "killed by its framework")
	return nil
}

// killOnAgent sends a kill without holding the lock across the call.
func (l *leader) killOnAgent(info AgentInfo, tid, msg string) {
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		if err := postJSON(l.ctx, agentURL(info)+"/sim/kill", map[string]string{"task_id": tid, "message": msg}, nil); err != nil {
			l.log.Warn("kill not delivered to the agent", "agent", info.ID, "task", tid, "err", err.Error())
		}
	}()
}

func (l *leader) shutdownAgent(info AgentInfo, reason string) {
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		_ = postJSON(l.ctx, agentURL(info)+"/sim/shutdown", map[string]string{"reason": reason}, nil)
	}()
}

func (l *leader) drainTasksLocked(a *agentEntry) {
	for tid := range a.tasks {
		l.killOnAgent(a.info, tid, "agent is draining")
	}
}

// drain is DRAIN_AGENT: no new tasks, its tasks killed; DRAINED once empty.
func (l *leader) drain(id string, markGone bool) error {
	l.mu.Lock()
	_, known := l.agents[id]
	_, gone := l.reg.Gone[id]
	l.mu.Unlock()
	if !known || gone {
		return fmt.Errorf("%w: agent %s is not registered", errNotFound, id)
	}
	if err := l.updateRegistry(func(r *Registry) error {
		r.Draining[id] = DrainInfo{State: ModeDraining, MarkGone: markGone}
		return nil
	}); err != nil {
		return err
	}
	l.mu.Lock()
	if a := l.agents[id]; a != nil {
		l.log.Info("draining agent", "agent", id, "tasks", len(a.tasks), "mark_gone", markGone)
		l.drainTasksLocked(a)
	}
	l.mu.Unlock()
	l.checkDrained(id)
	return nil
}

// reactivate is REACTIVATE_AGENT: a drained (or draining) agent takes
// tasks again.
func (l *leader) reactivate(id string) error {
	return l.updateRegistry(func(r *Registry) error {
		if _, ok := r.Draining[id]; !ok {
			return fmt.Errorf("%w: agent %s is not deactivated", errBadRequest, id)
		}
		delete(r.Draining, id)
		return nil
	})
}

// markGone is MARK_AGENT_GONE: the agent may never come back; its tasks
// are LOST (the emulated framework is not partition-aware) and it is told
// to shut down.
func (l *leader) markGone(id string) error {
	if err := l.updateRegistry(func(r *Registry) error {
		r.Gone[id] = time.Now()
		return nil
	}); err != nil {
		return err
	}
	l.mu.Lock()
	a := l.agents[id]
	if a != nil {
		l.removeAgentLocked(id, "REASON_AGENT_REMOVED_BY_OPERATOR", "agent marked gone by the operator")
		l.shutdownAgent(a.info, "agent marked gone by the operator")
	}
	l.mu.Unlock()
	l.log.Info("agent marked gone", "agent", id)
	return nil
}

// updateSchedule replaces the maintenance schedule: newly scheduled
// machines are DRAINING; a DOWN machine cannot leave the schedule.
func (l *leader) updateSchedule(s Schedule) error {
	for _, w := range s.Windows {
		for _, id := range w.MachineIDs {
			if id.Hostname == "" && id.IP == "" {
				return fmt.Errorf("%w: a machine id needs a hostname or an ip", errBadRequest)
			}
		}
	}
	return l.updateRegistry(func(r *Registry) error {
		in := map[string]MachineID{}
		for _, w := range s.Windows {
			for _, id := range w.MachineIDs {
				in[id.key()] = id
			}
		}
		for k, mode := range r.Machines {
			if _, ok := in[k]; !ok {
				if mode == ModeDown {
					return fmt.Errorf("%w: machine %s is DOWN: bring it up (POST /master/machine/up) before removing it from the schedule",
						errBadRequest, k)
				}
				delete(r.Machines, k)
				delete(r.MachineIDs, k)
			}
		}
		for k, id := range in {
			if _, ok := r.Machines[k]; !ok {
				r.Machines[k], r.MachineIDs[k] = ModeDraining, id
			}
		}
		r.Schedule = s
		return nil
	})
}

// machinesDown moves DRAINING machines to DOWN; their agents are removed
// (their tasks LOST) and shut down.
func (l *leader) machinesDown(ids []MachineID) error {
	if err := l.updateRegistry(func(r *Registry) error {
		for _, id := range ids {
			if r.Machines[id.key()] != ModeDraining {
				return fmt.Errorf("%w: machine %s is not in DRAINING mode (schedule it first: POST /master/maintenance/schedule)",
					errBadRequest, id.key())
			}
		}
		for _, id := range ids {
			r.Machines[id.key()] = ModeDown
		}
		return nil
	}); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for aid, a := range l.agents {
		for _, id := range ids {
			if id.matches(a.info) {
				l.log.Info("machine DOWN: removing its agent", "agent", aid, "machine", id.key(), "tasks", len(a.tasks))
				l.removeAgentLocked(aid, "REASON_AGENT_REMOVED", "machine is DOWN for maintenance")
				l.shutdownAgent(a.info, "machine is DOWN for maintenance")
			}
		}
	}
	return nil
}

// machinesUp ends maintenance for DOWN machines (they leave the schedule).
func (l *leader) machinesUp(ids []MachineID) error {
	return l.updateRegistry(func(r *Registry) error {
		for _, id := range ids {
			if r.Machines[id.key()] != ModeDown {
				return fmt.Errorf("%w: machine %s is not DOWN", errBadRequest, id.key())
			}
		}
		for _, id := range ids {
			delete(r.Machines, id.key())
			delete(r.MachineIDs, id.key())
			for wi := range r.Schedule.Windows {
				w := &r.Schedule.Windows[wi]
				kept := w.MachineIDs[:0]
				for _, m := range w.MachineIDs {
					if m.key() != id.key() {
						kept = append(kept, m)
					}
				}
				w.MachineIDs = kept
			}
		}
		windows := r.Schedule.Windows[:0]
		for _, w := range r.Schedule.Windows {
			if len(w.MachineIDs) > 0 {
				windows = append(windows, w)
			}
		}
		r.Schedule.Windows = windows
		return nil
	})
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
