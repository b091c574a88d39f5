package sandbox

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/zk-migrate/zk-migrate/zktest"
)

// ctlNode is one `zk-migrate control` process and how to start it again.
type ctlNode struct {
	id, api, gossip string
	args            []string
	proc            *proc
}

// The faults a chaos run can inject (MigrationConfig.Chaos).
const (
	FaultZooKeeper     = "zk"        // the ZooKeeper leader of A and of B
	FaultControlLeader = "control"   // the control-plane leader
	FaultProxy         = "proxy"     // the framework host's proxy
	FaultPartition     = "partition" // the framework host's proxy cut from B
	FaultDelay         = "delay"     // every proxy's traffic with B delayed by 50 ms
)

// Faults lists every fault a chaos run knows.
var Faults = []string{FaultZooKeeper, FaultControlLeader, FaultProxy, FaultPartition, FaultDelay}

// The moments a chaos run can inject its faults at (MigrationConfig.ChaosAt),
// besides the phases "2" to "5": as each begins (once its request was
// accepted).
const (
	AtFlip     = "flip"     // the flip A to B
	AtRollback = "rollback" // the rollback to phase 1 (the reverse flip)
)

// ChaosMoments lists every moment, in the order a migration reaches them.
var ChaosMoments = []string{AtFlip, "2", "3", "4", "5", AtRollback}

// CheckChaosAt refuses moments that are not ChaosMoments or that the run
// never reaches: a phase above rollbackAt (the migration goes back to
// phase 1 after it), the rollback without one.
func CheckChaosAt(at []string, rollbackAt int) error {
	for _, m := range at {
		i := slices.Index(ChaosMoments, m)
		switch {
		case i < 0:
			return fmt.Errorf("chaos moment %q: want any of %s", m, strings.Join(ChaosMoments, ","))
		case m == AtRollback && rollbackAt == 0:
			return fmt.Errorf("chaos moment %q: the run has no rollback", m)
		case m != AtFlip && m != AtRollback && rollbackAt != 0 && i+1 > rollbackAt:
			return fmt.Errorf("chaos moment %q: phase %s never runs when the migration is rolled back after phase %d", m, m, rollbackAt)
		}
	}
	return nil
}

// momentName is how the demo says a chaos moment.
func momentName(m string) string {
	switch m {
	case AtFlip:
		return "the flip"
	case AtRollback:
		return "the rollback"
	}
	return "phase " + m
}

// chaos starts the faults of a chaos run if moment is one of the run's
// (SPEC.md 5c): with FaultProxy, three seconds in, the framework host's
// proxy is SIGKILLed and restarted; with FaultZooKeeper, one second in, the ZooKeeper leader of
// A and of B is SIGKILLed and restarted 3 s later; with
// FaultControlLeader, two seconds in, the control-plane leader is
// SIGKILLed and restarted 5 s later from its data directory (neither
// --bootstrap nor --join: it catches up as the member it was). A fault
// still under way from an earlier moment is not injected again (said so).
// The goroutines are the demo's (cleanup waits for them).
func (d *demo) chaos(ctx context.Context, moment string) {
	if len(d.cfg.Chaos) == 0 || !slices.Contains(d.cfg.ChaosAt, moment) {
		return
	}
	var now, busy []string
	for _, f := range Faults {
		if !slices.Contains(d.cfg.Chaos, f) {
			continue
		}
		if !d.claimFault(f) {
			busy = append(busy, f)
			continue
		}
		now = append(now, f)
	}
	msg := fmt.Sprintf("during %s: %s", momentName(moment), strings.Join(now, ","))
	if len(now) == 0 {
		msg = fmt.Sprintf("during %s: none", momentName(moment))
	}
	if len(busy) > 0 {
		msg += fmt.Sprintf(" (%s still under way from an earlier moment: not injected again)", strings.Join(busy, ","))
	}
	d.fault("%s", msg)
	for _, f := range now {
		run := map[string]func(context.Context){FaultZooKeeper: d.killZooKeeperLeaders, FaultControlLeader: d.killControlLeader,
			FaultProxy: d.killProxy, FaultPartition: d.partitionProxy}[f]
		if run == nil { // FaultDelay: on from now to the end, never released
			d.fault("every proxy's traffic with B delayed by 50 ms each way from now on")
			for _, hs := range d.hops {
				for _, h := range hs {
					h.setDelay(50 * time.Millisecond)
				}
			}
			continue
		}
		d.faults.Add(1)
		go func() {
			defer d.faults.Done()
			defer d.releaseFault(f)
			run(ctx)
		}()
	}
}

// claimFault marks fault f under way; false if it already is.
func (d *demo) claimFault(f string) bool {
	d.faultMu.Lock()
	defer d.faultMu.Unlock()
	if d.faultOn[f] {
		return false
	}
	if d.faultOn == nil {
		d.faultOn = map[string]bool{}
	}
	d.faultOn[f] = true
	return true
}

// releaseFault marks fault f over: a later moment may inject it again.
func (d *demo) releaseFault(f string) {
	d.faultMu.Lock()
	delete(d.faultOn, f)
	d.faultMu.Unlock()
}

// partitionProxy cuts the framework host's proxy from every server of B
// (its primary since the flip) eight seconds from now, for 4 s: less than
// the session timeout, so its sessions on B must survive and its clients
// see requests wait, not fail.
func (d *demo) partitionProxy(ctx context.Context) {
	if !sleepCtx(ctx, 8*time.Second) {
		return
	}
	pr := d.fwProxy
	d.fault("partition: %s cut from every server of B for 4s", pr.name)
	for _, h := range d.hops[pr.name] {
		h.partition()
	}
	sleepCtx(ctx, 4*time.Second)
	for _, h := range d.hops[pr.name] {
		h.heal()
	}
	d.fault("partition of %s from B healed", pr.name)
}

// killProxy SIGKILLs the framework host's proxy three seconds from now and
// restarts it one second later on the same address with the same state
// directory: its clients (the framework, the probe) reconnect to it and
// must find their sessions, flipped to B already.
func (d *demo) killProxy(ctx context.Context) {
	if !sleepCtx(ctx, 3*time.Second) {
		return
	}
	pr := d.fwProxy
	// Its counters die with it: the report adds what it had counted.
	if mf, err := scrape(ctx, pr.metrics); err == nil {
		d.faultMu.Lock()
		d.killedMetrics = append(d.killedMetrics, mf)
		d.faultMu.Unlock()
	} else {
		d.fault("reading %s's metrics before killing it failed (the report's mirror and expiry figures miss what it counted): %v", pr.name, err)
	}
	d.fault("SIGKILL %s (%s)", pr.name, pr.listen)
	_ = pr.proc.cmd.Process.Kill()
	<-pr.proc.exited
	if !sleepCtx(ctx, time.Second) {
		return
	}
	if err := d.startProxy(ctx, pr); err != nil {
		d.fault("restarting %s failed: %v", pr.name, err)
		return
	}
	d.fault("%s restarted from its state directory", pr.name)
}

// killZooKeeperLeaders SIGKILLs the leader of A and of B one second from
// now and restarts each 3 s later; it returns once both are restarted.
func (d *demo) killZooKeeperLeaders(ctx context.Context) {
	if !sleepCtx(ctx, time.Second) {
		return
	}
	var restarts sync.WaitGroup
	defer restarts.Wait()
	for _, e := range []struct {
		name string
		ens  *zktest.Ensemble
	}{{"A", d.a}, {"B", d.b}} {
		s := leaderServer(e.ens)
		if s == nil {
			continue
		}
		d.fault("SIGKILL ZooKeeper server %d of %s (%s, the ensemble's leader)", s.ID, e.name, s.Addr())
		_ = e.ens.Kill(s.ID)
		restarts.Add(1)
		go func() {
			defer restarts.Done()
			if !sleepCtx(ctx, 3*time.Second) {
				return
			}
			if err := e.ens.Restart(ctx, s.ID); err != nil {
				d.fault("restarting ZooKeeper server %d of %s failed: %v", s.ID, e.name, err)
				return
			}
			d.fault("ZooKeeper server %d of %s restarted and serving", s.ID, e.name)
		}()
	}
}

// killControlLeader SIGKILLs the control-plane leader two seconds from
// now and restarts it 5 s later from its data directory.
func (d *demo) killControlLeader(ctx context.Context) {
	if !sleepCtx(ctx, 2*time.Second) {
		return
	}
	n := d.controlLeader(ctx)
	if n == nil {
		d.fault("no control-plane leader found to kill")
		return
	}
	d.fault("SIGKILL control node %s (the control-plane leader)", n.id)
	_ = n.proc.cmd.Process.Kill()
	<-n.proc.exited
	if !sleepCtx(ctx, 5*time.Second) {
		return
	}
	args := restartArgs(n.args, d.otherGossip(n))
	p, err := d.ps.start("control-"+n.id, d.cfg.ZkMigrate, args...)
	if err != nil {
		d.fault("restarting control node %s failed: %v", n.id, err)
		return
	}
	n.proc = p
	d.fault("control node %s restarted from its data directory", n.id)
}

// fault prints and records what chaos did.
func (d *demo) fault(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	d.say("FAULT: %s", msg)
	d.faultMu.Lock()
	d.faultLog = append(d.faultLog, fmt.Sprintf("%5.1fs %s", time.Since(d.start).Seconds(), msg))
	d.faultMu.Unlock()
}

// controlLeader asks each node's /healthz which one leads.
func (d *demo) controlLeader(ctx context.Context) *ctlNode {
	hc := &http.Client{Timeout: 2 * time.Second}
	for _, n := range d.ctl {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+n.api+"/healthz", nil)
		resp, err := hc.Do(req)
		if err != nil {
			continue
		}
		var h struct {
			IsLeader bool `json:"is_leader"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&h)
		resp.Body.Close()
		if h.IsLeader {
			return n
		}
	}
	return nil
}

// otherGossip is the gossip address of a node other than n, for n to join
// the pool again.
func (d *demo) otherGossip(n *ctlNode) string {
	for _, o := range d.ctl {
		if o != n {
			return o.gossip
		}
	}
	return ""
}

// restartArgs are a control node's arguments for a restart from its data
// directory: without --bootstrap and --join, with a gossip member to join.
func restartArgs(args []string, gossipJoin string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		switch args[i] {
		case "--bootstrap":
			continue
		case "--join", "--gossip-join":
			i++
			continue
		}
		out = append(out, args[i])
	}
	if gossipJoin != "" && !slices.Contains(out, "--gossip-join") {
		out = append(out, "--gossip-join", gossipJoin)
	}
	return out
}

// leaderServer is the running server of e that leads its ensemble.
func leaderServer(e *zktest.Ensemble) *zktest.Server {
	for _, s := range e.Servers {
		if m, err := s.Mode(); err == nil && m == "leader" {
			return s
		}
	}
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}
