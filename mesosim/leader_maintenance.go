package mesosim

// The leader's maintenance calls: schedule, machine down/up, drains and
// gone agents, each a registry write.

import (
	"encoding/json"
	"fmt"
	"time"
)

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
		if err := checkUnavailability(w.Unavailability); err != nil {
			return err
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

// checkUnavailability is Mesos's maintenance::validation::unavailability:
// a window's duration may not be negative (the master answers 400 with
// this message).
func checkUnavailability(raw json.RawMessage) error {
	if len(raw) == 0 {
		return nil
	}
	var u struct {
		Duration *struct {
			Nanoseconds int64 `json:"nanoseconds"`
		} `json:"duration"`
	}
	if err := json.Unmarshal(raw, &u); err != nil {
		return fmt.Errorf("%w: unavailability: %v", errBadRequest, err)
	}
	if u.Duration != nil && u.Duration.Nanoseconds < 0 {
		return fmt.Errorf("%w: Unavailability 'duration' is negative", errBadRequest)
	}
	return nil
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
