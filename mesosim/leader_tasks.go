package mesosim

// The leader's frameworks and tasks: subscription, placement, kills, status
// updates and their delivery to the framework.

import (
	"fmt"
	"time"
)

// frameworkLocked returns the entry for id, creating it (inactive) for tasks
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
