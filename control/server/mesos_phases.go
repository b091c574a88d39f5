package server

import (
	"context"
	"fmt"
	"github.com/zk-migrate/zk-migrate/ensemble"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/zk-migrate/zk-migrate/control"
	"github.com/zk-migrate/zk-migrate/deployer"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// MesosPhase is the step runner of phases 2 to 6. With migration.yaml's
// mesos section it moves the Mesos cluster itself:
//
//   - phase 2 (masters_on_b): A's masters but the leader are replaced one
//     for one by B's (stop one, then start one: the quorum rule allows no
//     more than 2q-1 masters);
//   - phase 3 (masters_off_a): the leading A master is stopped last and
//     deliberately, B's last master started; one B master leads;
//   - phase 4 (agents_on_b): B's agents start and register (GET_AGENTS);
//   - phase 5 (drain_agents_a): A's machines enter the maintenance
//     schedule, A's agents are drained (DRAIN_AGENT) until every task runs
//     on B's agents (GET_TASKS) with none failed, then their machines go
//     DOWN and the agents stop;
//   - phase 6 (remove_a): anything of A still running is stopped, the sync
//     stops, the executor asks every proxy to retire A (their shadow
//     sessions there closed: control/executor_retire.go), and A's servers
//     must show no client session (cons).
//
// Each Undo reverses its phase. Without a mesos section the phase runs its
// actions (Script). Every Run, Verify and Undo works from what runs now, so
// a new control leader can repeat them.
type MesosPhase struct {
	Step   control.Step
	Script Script
	Logger *slog.Logger
	// StopSync stops the migration's sync (phase 6).
	StopSync func(m *control.Migration)
	// Deployer, if set, replaces the deployer migration.yaml names (tests).
	Deployer deployer.Deployer

	mu       sync.Mutex
	baseline map[string]taskBaseline // phase 5, per migration
}

// taskBaseline is what phase 5 found before its drain: the active task
// count and the failures already known.
type taskBaseline struct {
	active int
	failed map[string]bool
}

func (p *MesosPhase) cluster(m *control.Migration) (*mesosCluster, error) {
	cfg, err := configOf(m)
	if err != nil || cfg.Mesos == nil {
		return nil, err
	}
	dep := p.Deployer
	if dep == nil {
		if dep, err = NewDeployer(cfg.Mesos); err != nil {
			return nil, err
		}
	}
	log := p.Logger
	if log == nil {
		log = slog.Default()
	}
	c := newMesosCluster(cfg.Mesos, dep, log.With("migration", m.ID, "step", p.Step.String()))
	c.primary, c.secondary, c.auth = cfg.Migration.SourceZK, cfg.Migration.TargetZK, syncAuth(cfg)
	if m.Primary == ensemble.Target {
		c.primary, c.secondary = cfg.Migration.TargetZK, cfg.Migration.SourceZK
	}
	return c, nil
}

// phase2Target is phase 2's masters: B's but the last, and the A master
// moved last (the leader while it is on A, else the first A master running).
func (c *mesosCluster) phase2Target(ctx context.Context) ([]deployer.Process, error) {
	n := len(c.masters[0])
	target := slices.Clone(c.masters[1][:n-1])
	if l, ok := c.leaderProcess(ctx); ok && l.Side == "A" {
		return append(target, l), nil
	}
	run, err := c.running(ctx, c.masters[0])
	if err != nil {
		return nil, err
	}
	if len(run) > 0 {
		return append(target, run[0]), nil
	}
	return append(target, c.masters[0][0]), nil
}

// Run does the phase's work.
func (p *MesosPhase) Run(ctx context.Context, m *control.Migration) error {
	c, err := p.cluster(m)
	if err != nil {
		return err
	}
	if c == nil {
		return p.Script.Run(ctx, m)
	}
	switch p.Step {
	case control.StepMastersOnB:
		t, err := c.phase2Target(ctx)
		if err != nil {
			return err
		}
		return c.converge(ctx, t)
	case control.StepMastersOffA:
		return c.converge(ctx, c.masters[1])
	case control.StepAgentsOnB:
		return c.startAgents(ctx, 1)
	case control.StepDrainAgentsA:
		if err := p.recordBaseline(ctx, m.ID, c); err != nil {
			return err
		}
		if err := c.scheduleMachines(ctx, 0, false); err != nil {
			return err
		}
		if err := c.drainAgents(ctx, 0); err != nil {
			return err
		}
		if err := c.machines(ctx, 0, false); err != nil { // drained: nothing to lose
			return err
		}
		return c.stopAll(ctx, c.agents[0])
	case control.StepRemoveA:
		if err := c.stopAll(ctx, append(slices.Clone(c.agents[0]), c.masters[0]...)); err != nil {
			return err
		}
		if p.StopSync != nil {
			p.StopSync(m)
		}
		return nil
	}
	return fmt.Errorf("step %s is not a Mesos phase", p.Step)
}

// Verify checks the phase's success criteria, waiting up to the mesos
// section's timeout_sec for them.
func (p *MesosPhase) Verify(ctx context.Context, m *control.Migration) error {
	c, err := p.cluster(m)
	if err != nil {
		return err
	}
	if c == nil {
		return p.Script.Verify(ctx, m)
	}
	switch p.Step {
	case control.StepMastersOnB:
		t, err := c.phase2Target(ctx)
		if err != nil {
			return err
		}
		return c.checkMasters(ctx, t, nil)
	case control.StepMastersOffA:
		return c.checkMasters(ctx, c.masters[1], c.masters[1])
	case control.StepAgentsOnB:
		return c.agentsActive(ctx, 1, false)
	case control.StepDrainAgentsA:
		return p.verifyDrained(ctx, m.ID, c)
	case control.StepRemoveA:
		cfg, err := configOf(m)
		if err != nil {
			return err
		}
		return c.poll(ctx, "no client session left on A", func() error { return sessionsLeft(cfg.Migration.SourceZK) })
	}
	return fmt.Errorf("step %s is not a Mesos phase", p.Step)
}

// Undo reverses the phase (a rollback).
func (p *MesosPhase) Undo(ctx context.Context, m *control.Migration) error {
	c, err := p.cluster(m)
	if err != nil {
		return err
	}
	if c == nil {
		return p.Script.Undo(ctx, m)
	}
	switch p.Step {
	case control.StepMastersOnB:
		if err := c.converge(ctx, c.masters[0]); err != nil {
			return err
		}
		if m.Primary != ensemble.Target || m.RollbackTo >= control.StepFlip || c.secondary == "" {
			return nil
		}
		// The reverse flip comes next and every master will read A: A
		// must hold no znode of a master that no longer runs.
		run, err := c.running(ctx, c.allMasters())
		if err != nil {
			return err
		}
		return c.poll(ctx, "ensemble A showing only the running masters before the reverse flip makes it the primary again",
			func() error { return c.onlyRunningOn(ctx, c.secondary, run) })
	case control.StepMastersOffA:
		// Back to phase 2's shape: B's last master gives its place to an
		// A master.
		n := len(c.masters[0])
		return c.converge(ctx, append(slices.Clone(c.masters[1][:n-1]), c.masters[0][0]))
	case control.StepAgentsOnB:
		// B's agents hand their tasks back before they stop.
		if err := c.drainAgents(ctx, 1); err != nil {
			return err
		}
		return c.stopAll(ctx, c.agents[1])
	case control.StepDrainAgentsA:
		p.mu.Lock()
		delete(p.baseline, m.ID) // the next run counts again
		p.mu.Unlock()
		if err := c.machines(ctx, 0, true); err != nil {
			return err
		}
		if err := c.scheduleMachines(ctx, 0, true); err != nil {
			return err
		}
		return c.startAgents(ctx, 0)
	case control.StepRemoveA:
		return nil // the sync restarts by itself (Supervise); A's processes come back with the earlier undos
	}
	return fmt.Errorf("step %s is not a Mesos phase", p.Step)
}

func (p *MesosPhase) recordBaseline(ctx context.Context, id string, c *mesosCluster) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.baseline[id]; ok {
		return nil
	}
	// The framework keeps its tasks active while it churns them: one
	// sample may catch a kill before its replacement, or both. The most
	// frequent count over a second is the one it keeps.
	counts := map[int]int{}
	b := taskBaseline{failed: map[string]bool{}}
	for i := 0; i < 5; i++ {
		if i > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(200 * time.Millisecond):
			}
		}
		active, completed, err := c.api.tasks(ctx)
		if err != nil {
			return err
		}
		counts[len(active)]++
		if n := counts[len(active)]; n > counts[b.active] || n == counts[b.active] && len(active) < b.active {
			b.active = len(active)
		}
		for _, t := range completed {
			if t.failed() {
				b.failed[t.TaskID.Value] = true
			}
		}
	}
	if p.baseline == nil {
		p.baseline = map[string]taskBaseline{}
	}
	p.baseline[id] = b
	c.log.Info("mesos: tasks before the drain", "active", b.active, "failed_before", len(b.failed))
	return nil
}

// verifyDrained checks phase 5: no agent of A registered, every active
// task RUNNING on B's agents, at least as many as before the drain, and no
// task failed since.
func (p *MesosPhase) verifyDrained(ctx context.Context, id string, c *mesosCluster) error {
	p.mu.Lock()
	b, ok := p.baseline[id]
	p.mu.Unlock()
	return c.poll(ctx, "every task of A's agents running again on B's", func() error {
		idsA, _, err := c.agentIDs(ctx, 0)
		if err != nil {
			return err
		}
		if len(idsA) > 0 {
			return fmt.Errorf("A's agents still registered: %v", idsA)
		}
		idsB, _, err := c.agentIDs(ctx, 1)
		if err != nil {
			return err
		}
		onB := map[string]bool{}
		for _, v := range idsB {
			onB[v] = true
		}
		active, completed, err := c.api.tasks(ctx)
		if err != nil {
			return err
		}
		var failed []string
		for _, t := range completed {
			if t.failed() && (!ok || !b.failed[t.TaskID.Value]) {
				failed = append(failed, t.TaskID.Value+" "+t.State)
			}
		}
		if len(failed) > 0 {
			sort.Strings(failed)
			return fmt.Errorf("%w: %d task(s) failed during the drain: %s", errPermanent, len(failed), strings.Join(failed, ", "))
		}
		running := 0
		for _, t := range active {
			if !onB[t.AgentID.Value] {
				return fmt.Errorf("task %s runs on agent %s, not one of B's", t.TaskID.Value, t.AgentID.Value)
			}
			if t.State == "TASK_RUNNING" {
				running++
			}
		}
		if running < b.active || running < len(active) {
			return fmt.Errorf("%d of %d active task(s) RUNNING on B's agents; %d ran before the drain", running, len(active), b.active)
		}
		return nil
	})
}

// sessionsLeft asks every server of an ensemble for its connections
// (cons) and fails naming each client session still open.
func sessionsLeft(connect string) error {
	var left []string
	for _, addr := range strings.Split(connect, ",") {
		addr = strings.TrimSpace(addr)
		out, err := zkclient.FourLetterWord(addr, "cons", 3*time.Second)
		if err != nil {
			return fmt.Errorf("cons on %s: %w (every server of A must answer to prove no session is left)", addr, err)
		}
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, "sid=0x") {
				left = append(left, addr+": "+strings.TrimSpace(line))
			}
		}
	}
	if len(left) > 0 {
		return fmt.Errorf("%d client session(s) still on A (stop what holds them: a Mesos process not moved, a proxy still mirroring, "+
			"a replicator): %s", len(left), strings.Join(left, "; "))
	}
	return nil
}
