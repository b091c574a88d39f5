package server

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/zk-migrate/zk-migrate/deployer"
)

// agentIDs maps the hostnames of side's agents to their registered agent
// ids (GET_AGENTS), with each one's drain state ("" when active).
func (c *mesosCluster) agentIDs(ctx context.Context, side int) (ids, drain map[string]string, err error) {
	all, err := c.api.agents(ctx)
	if err != nil {
		return nil, nil, err
	}
	ids, drain = map[string]string{}, map[string]string{}
	for _, a := range all {
		for _, p := range c.agents[side] {
			if a.AgentInfo.Hostname == p.Hostname && a.AgentInfo.Port == p.Port {
				ids[p.Name] = a.AgentInfo.ID.Value
				if a.DrainInfo != nil {
					drain[p.Name] = a.DrainInfo.State
				}
			}
		}
	}
	return ids, drain, nil
}

func machineOf(p deployer.Process) machineID { return machineID{Hostname: p.Hostname, IP: p.Host} }

// startAgents starts side's agents and waits until each is registered and
// active (a drain left by an earlier rollback is ended).
func (c *mesosCluster) startAgents(ctx context.Context, side int) error {
	for _, p := range c.agents[side] {
		if err := c.dep.Start(ctx, p); err != nil {
			return err
		}
	}
	return c.agentsActive(ctx, side, true)
}

// agentsActive waits until each of side's agents is registered and
// active; with reactivate it ends a drain left by an earlier rollback.
func (c *mesosCluster) agentsActive(ctx context.Context, side int, reactivate bool) error {
	return c.poll(ctx, "agents "+names(c.agents[side])+" registered and active", func() error {
		ids, drain, err := c.agentIDs(ctx, side)
		if err != nil {
			return err
		}
		for _, p := range c.agents[side] {
			if ids[p.Name] == "" {
				return fmt.Errorf("agent %s is not registered (GET_AGENTS)", p.Name)
			}
			if drain[p.Name] != "" && !reactivate {
				return fmt.Errorf("agent %s is %s (DRAIN_AGENT), not active", p.Name, drain[p.Name])
			}
			if drain[p.Name] != "" {
				if err := c.api.v1(ctx, "REACTIVATE_AGENT", map[string]any{"reactivate_agent": map[string]any{"agent_id": v1ID{ids[p.Name]}}}, nil); err != nil {
					return err
				}
				return fmt.Errorf("agent %s was %s: reactivated", p.Name, drain[p.Name])
			}
		}
		return nil
	})
}

// drainAgents drains side's registered agents (DRAIN_AGENT) and waits
// until each is DRAINED and runs no task.
func (c *mesosCluster) drainAgents(ctx context.Context, side int) error {
	ids, drain, err := c.agentIDs(ctx, side)
	if err != nil {
		return err
	}
	for _, p := range c.agents[side] {
		if id := ids[p.Name]; id != "" && drain[p.Name] == "" {
			c.log.Info("mesos: draining an agent", "agent", p.Name, "id", id)
			if err := c.api.v1(ctx, "DRAIN_AGENT", map[string]any{"drain_agent": map[string]any{"agent_id": v1ID{id}}}, nil); err != nil {
				return err
			}
		}
	}
	return c.poll(ctx, "agents "+names(c.agents[side])+" drained", func() error {
		ids, drain, err := c.agentIDs(ctx, side)
		if err != nil {
			return err
		}
		for _, p := range c.agents[side] {
			if ids[p.Name] != "" && drain[p.Name] != "DRAINED" {
				return fmt.Errorf("agent %s is %q", p.Name, drain[p.Name])
			}
		}
		return c.noTasksOn(ctx, ids)
	})
}

// noTasksOn fails if an active task runs on one of the agent ids.
func (c *mesosCluster) noTasksOn(ctx context.Context, ids map[string]string) error {
	active, _, err := c.api.tasks(ctx)
	if err != nil {
		return err
	}
	var on []string
	for _, t := range active {
		for name, id := range ids {
			if t.AgentID.Value == id {
				on = append(on, t.TaskID.Value+" on "+name)
			}
		}
	}
	if len(on) > 0 {
		sort.Strings(on)
		return fmt.Errorf("%d task(s) still there: %s", len(on), strings.Join(on, ", "))
	}
	return nil
}

// scheduleMachines adds (or with remove, takes out) side's agents'
// machines in the maintenance schedule, keeping every other window.
func (c *mesosCluster) scheduleMachines(ctx context.Context, side int, remove bool) error {
	s, err := c.api.schedule(ctx)
	if err != nil {
		return err
	}
	ours := map[machineID]bool{}
	for _, p := range c.agents[side] {
		ours[machineOf(p)] = true
	}
	var out schedule
	present := map[machineID]bool{}
	for _, w := range s.Windows {
		w.MachineIDs = slices.DeleteFunc(slices.Clone(w.MachineIDs), func(m machineID) bool {
			present[m] = true
			return remove && ours[m]
		})
		if len(w.MachineIDs) > 0 {
			out.Windows = append(out.Windows, w)
		}
	}
	var add []machineID
	for _, p := range c.agents[side] {
		if m := machineOf(p); !remove && !present[m] {
			add = append(add, m)
		}
	}
	changed := len(add) > 0 || len(out.Windows) != len(s.Windows)
	if len(add) > 0 {
		out.Windows = append(out.Windows, window{MachineIDs: add})
	}
	if remove {
		for _, w := range s.Windows {
			for _, m := range w.MachineIDs {
				changed = changed || ours[m]
			}
		}
	}
	if !changed {
		return nil
	}
	return c.api.setSchedule(ctx, out)
}

// machines posts side's agents' machines to /master/machine/down or /up,
// those not already there.
func (c *mesosCluster) machines(ctx context.Context, side int, up bool) error {
	draining, down, err := c.api.maintenanceStatus(ctx)
	if err != nil {
		return err
	}
	var ids []machineID
	for _, p := range c.agents[side] {
		m := machineOf(p)
		switch {
		case up && slices.Contains(down, m), !up && slices.Contains(draining, m):
			ids = append(ids, m)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	path := "/master/machine/down"
	if up {
		path = "/master/machine/up"
	}
	return c.api.do(ctx, "POST", path, ids, nil)
}

// stopAll stops processes with the deployer.
func (c *mesosCluster) stopAll(ctx context.Context, ps []deployer.Process) error {
	for _, p := range ps {
		if err := c.dep.Stop(ctx, p); err != nil {
			return err
		}
	}
	return nil
}
