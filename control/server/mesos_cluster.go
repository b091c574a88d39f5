package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/zk-migrate/zk-migrate/control"
	"github.com/zk-migrate/zk-migrate/deployer"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// mesosCluster is a migration's Mesos cluster as its mesos section
// declares it: the masters and agents of each side, how they are started
// (the deployer) and the operator API of its masters.
type mesosCluster struct {
	cfg     *control.Mesos
	dep     deployer.Deployer
	api     *mesosAPI
	masters [2][]deployer.Process // A, B
	agents  [2][]deployer.Process
	timeout time.Duration
	log     *slog.Logger
	// primary is the ensemble the Mesos processes use (through their
	// proxies), auth sync.auth: the masters' znodes are checked there.
	primary string
	auth    []zkclient.Auth
	// secondary is the other ensemble (the one a reverse flip makes the
	// primary again).
	secondary string
}

// NewDeployer builds the deployer a mesos section names.
func NewDeployer(m *control.Mesos) (deployer.Deployer, error) {
	d := m.Deployer
	sec := func(n int) time.Duration { return time.Duration(n) * time.Second }
	switch d.Kind {
	case control.DeployLocal:
		return &deployer.Local{Binary: d.Binary, Dir: d.Dir, ZK: m.ZK, Quorum: m.Quorum,
			MasterArgs: d.MasterArgs, AgentArgs: d.AgentArgs, StartTimeout: sec(d.StartTimeoutSec), StopTimeout: sec(d.StopTimeoutSec)}, nil
	case control.DeploySystemd:
		return &deployer.Systemd{
			SSH: deployer.SSH{Command: d.SSH, User: d.SSHUser, Port: d.SSHPort, IdentityFile: d.SSHIdentityFile,
				ConfigFile: d.SSHConfig, Options: d.SSHOptions, ConnectTimeout: sec(d.ConnectTimeoutSec)},
			Sudo: d.Sudo, MasterUnit: d.MasterUnit, AgentUnit: d.AgentUnit, Systemctl: d.Systemctl, Journalctl: d.Journalctl,
			StartTimeout: sec(d.StartTimeoutSec), StopTimeout: sec(d.StopTimeoutSec)}, nil
	default:
		return nil, fmt.Errorf("mesos.deployer.kind %q is not one of local, systemd", d.Kind)
	}
}

func newMesosCluster(m *control.Mesos, dep deployer.Deployer, log *slog.Logger) *mesosCluster {
	c := &mesosCluster{cfg: m, dep: dep, timeout: time.Duration(m.TimeoutSec) * time.Second, log: log}
	var urls []string
	for i, side := range []control.MesosSide{m.Sides.A, m.Sides.B} {
		name := "AB"[i : i+1]
		for _, p := range side.Masters {
			c.masters[i] = append(c.masters[i], deployer.Process{Kind: deployer.Master, Name: p.Name, Side: name, Host: p.Host, Port: p.Port, Hostname: p.Hostname})
			urls = append(urls, c.masters[i][len(c.masters[i])-1].URL())
		}
		for _, p := range side.Agents {
			c.agents[i] = append(c.agents[i], deployer.Process{Kind: deployer.Agent, Name: p.Name, Side: name, Host: p.Host, Port: p.Port, Hostname: p.Hostname})
		}
	}
	c.api = newMesosAPI(urls)
	return c
}

func (c *mesosCluster) allMasters() []deployer.Process {
	return append(slices.Clone(c.masters[0]), c.masters[1]...)
}

// errPermanent marks a condition waiting cannot change (a task failed).
var errPermanent = errors.New("cannot succeed")

// poll calls cond every 200 ms until it returns nil or the phase's timeout
// passes; the error then says what was waited for and cond's last answer.
// An errPermanent answer ends the wait at once.
func (c *mesosCluster) poll(ctx context.Context, what string, cond func() error) error {
	deadline := time.Now().Add(c.timeout)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if errors.Is(err, errPermanent) {
			return fmt.Errorf("%s: %w", what, err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not done after %v: %w", what, c.timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// running returns the masters that run now.
func (c *mesosCluster) running(ctx context.Context, ps []deployer.Process) ([]deployer.Process, error) {
	var out []deployer.Process
	for _, p := range ps {
		ok, err := c.dep.Running(ctx, p)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, p)
		}
	}
	return out, nil
}

// leaderProcess returns the master leading now (ok false if none or not
// exactly one).
func (c *mesosCluster) leaderProcess(ctx context.Context) (deployer.Process, bool) {
	lead, _ := c.api.leaders(ctx)
	if len(lead) != 1 {
		return deployer.Process{}, false
	}
	for _, p := range c.allMasters() {
		if p.URL() == lead[0] {
			return p, true
		}
	}
	return deployer.Process{}, false
}

// steady checks that exactly one of the running masters leads and every
// other running master redirects to it.
func (c *mesosCluster) steady(ctx context.Context) error {
	run, err := c.running(ctx, c.allMasters())
	if err != nil {
		return err
	}
	lead, redirects := c.api.leaders(ctx)
	if len(lead) != 1 {
		return fmt.Errorf("%d masters answer as leader (%v); want exactly one", len(lead), lead)
	}
	for _, p := range run {
		if p.URL() != lead[0] && redirects[p.URL()] != lead[0] {
			return fmt.Errorf("master %s does not follow the leader %s (it redirects to %q)", p.Name, lead[0], redirects[p.URL()])
		}
	}
	return nil
}

// converge replaces masters one for one until exactly target runs: while
// as many masters run as the cluster has (or nothing is missing) it stops
// one that is not in target, non-leaders first and the leader last, then
// starts one that is missing, and after each move waits until one leader
// is followed by every running master. Stopping first keeps the count at
// or below N, so Mesos' quorum rule (at most 2q-1 log replicas) holds.
// After a start it writes the registry again (the maintenance schedule,
// unchanged), so the new master's empty replica is caught up before an
// older one leaves. It is idempotent: it works from what runs now.
func (c *mesosCluster) converge(ctx context.Context, target []deployer.Process) error {
	n := len(c.masters[0])
	in := func(p deployer.Process) bool {
		return slices.ContainsFunc(target, func(q deployer.Process) bool { return q.Name == p.Name })
	}
	for i := 0; i < 4*n+4; i++ {
		if err := ctx.Err(); err != nil {
			return err // a deposed control leader moves no more masters
		}
		run, err := c.running(ctx, c.allMasters())
		if err != nil {
			return err
		}
		var extra, missing []deployer.Process
		for _, p := range c.allMasters() {
			isRunning := slices.Contains(run, p)
			switch {
			case isRunning && !in(p):
				extra = append(extra, p)
			case !isRunning && in(p):
				missing = append(missing, p)
			}
		}
		if len(extra) == 0 && len(missing) == 0 {
			if len(run) >= c.cfg.Quorum {
				return c.poll(ctx, "one leader followed by every master", func() error { return c.steady(ctx) })
			}
			return nil
		}
		leader, hasLeader := c.leaderProcess(ctx)
		slices.SortStableFunc(extra, func(a, b deployer.Process) int { // the leader last
			return boolInt(hasLeader && a.Name == leader.Name) - boolInt(hasLeader && b.Name == leader.Name)
		})
		if len(extra) > 0 && (len(run) >= n || len(missing) == 0) {
			p := extra[0]
			why := "replaced one for one"
			if hasLeader && p.Name == leader.Name {
				why = "the leading master, moved deliberately: the lowest remaining json.info_ is elected"
			}
			c.log.Info("mesos: stopping a master", "master", p.Name, "side", p.Side, "why", why)
			if err := c.dep.Stop(ctx, p); err != nil {
				return err
			}
			run = slices.DeleteFunc(run, func(q deployer.Process) bool { return q.Name == p.Name })
		} else {
			p := missing[0]
			// A replica left in ZooKeeper by a master that no longer runs
			// would put the new one beyond 2q-1: wait until it is gone.
			if err := c.poll(ctx, "ZooKeeper showing only the running masters before "+p.Name+" starts",
				func() error { return c.zkAgrees(ctx, len(run)) }); err != nil {
				return err
			}
			c.log.Info("mesos: starting a master", "master", p.Name, "side", p.Side)
			if err := c.dep.Start(ctx, p); err != nil {
				return err
			}
			run = append(run, p)
		}
		if len(run) >= c.cfg.Quorum {
			if err := c.poll(ctx, "one leader followed by every master", func() error { return c.steady(ctx) }); err != nil {
				return err
			}
			if s, err := c.api.schedule(ctx); err == nil { // catch new replicas up
				_ = c.api.setSchedule(ctx, s)
			}
		}
	}
	return fmt.Errorf("masters did not converge to %s", names(target))
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func names(ps []deployer.Process) string {
	var s []string
	for _, p := range ps {
		s = append(s, p.Name)
	}
	return strings.Join(s, ", ")
}

// checkMasters verifies that exactly target runs, with one leader that
// every running master follows, and that the leader is in leaderIn if set.
func (c *mesosCluster) checkMasters(ctx context.Context, target []deployer.Process, leaderIn []deployer.Process) error {
	var missing []deployer.Process // at the last poll
	err := c.poll(ctx, "the masters "+names(target)+" with one leader", func() error {
		run, err := c.running(ctx, c.allMasters())
		if err != nil {
			return err
		}
		missing = missing[:0]
		if names(run) != names(sortLike(target, c.allMasters())) {
			for _, p := range target {
				if !slices.Contains(run, p) {
					missing = append(missing, p)
				}
			}
			return fmt.Errorf("running masters: %s; want %s", names(run), names(target))
		}
		if err := c.steady(ctx); err != nil {
			return err
		}
		if err := c.zkAgrees(ctx, len(run)); err != nil {
			return err
		}
		if leaderIn != nil {
			l, _ := c.leaderProcess(ctx)
			if !slices.ContainsFunc(leaderIn, func(p deployer.Process) bool { return p.Name == l.Name }) {
				return fmt.Errorf("the leader is %s; want one of %s", l.Name, names(leaderIn))
			}
		}
		return nil
	})
	// Described once, when the wait failed: a description may be a
	// journalctl over ssh.
	if d, ok := c.dep.(deployer.Describer); ok && err != nil {
		for _, p := range missing {
			err = fmt.Errorf("%w; %s: %s", err, p.Name, d.Describe(p))
		}
	}
	return err
}

// sortLike returns ps in the order of all.
func sortLike(ps, all []deployer.Process) []deployer.Process {
	var out []deployer.Process
	for _, p := range all {
		if slices.ContainsFunc(ps, func(q deployer.Process) bool { return q.Name == p.Name }) {
			out = append(out, p)
		}
	}
	return out
}
