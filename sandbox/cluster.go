package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/zk-migrate/zk-migrate/deployer"
	"github.com/zk-migrate/zk-migrate/zktest"
)

// startEnsembles starts A and B, three servers each, side by side.
func (d *demo) startEnsembles(ctx context.Context) error {
	d.say("starting ZooKeeper ensembles A and B (three real ZooKeeper servers each)")
	var wg sync.WaitGroup
	var errA, errB error
	wg.Add(2)
	go func() {
		defer wg.Done()
		d.a, errA = zktest.Start(ctx, zktest.Config{Servers: 3, Name: "demo-a", Dir: filepath.Join(d.cfg.Dir, "zk-a")})
	}()
	go func() {
		defer wg.Done()
		d.b, errB = zktest.Start(ctx, zktest.Config{Servers: 3, Name: "demo-b", Dir: filepath.Join(d.cfg.Dir, "zk-b")})
	}()
	wg.Wait()
	for _, e := range []*zktest.Ensemble{d.a, d.b} {
		if e != nil {
			d.cleanups = append(d.cleanups, e.Close)
		}
	}
	if err := errors.Join(errA, errB); err != nil {
		return fmt.Errorf("sandbox: ensembles: %w", err)
	}
	d.say("A: %s", d.a.ConnectString())
	d.say("B: %s", d.b.ConnectString())
	return nil
}

// secrets writes the operator token file, the proxies' flip token and the
// gossip key (mode 600), and returns their paths.
func (d *demo) secrets() (tokens, proxyToken, gossipKey, operator string, err error) {
	rnd := func(n int) []byte { b := make([]byte, n); _, _ = rand.Read(b); return b }
	operator = hex.EncodeToString(rnd(16))
	tokens = filepath.Join(d.cfg.Dir, "tokens")
	proxyToken = filepath.Join(d.cfg.Dir, "proxy.token")
	gossipKey = filepath.Join(d.cfg.Dir, "gossip.key")
	for path, body := range map[string]string{
		tokens:     operator + " operator demo\n",
		proxyToken: hex.EncodeToString(rnd(16)) + "\n",
		gossipKey:  base64.StdEncoding.EncodeToString(rnd(32)) + "\n",
	} {
		if err = os.WriteFile(path, []byte(body), 0o600); err != nil {
			return "", "", "", "", fmt.Errorf("sandbox: %w", err)
		}
	}
	return tokens, proxyToken, gossipKey, operator, nil
}

// startControlPlane starts three `zk-migrate control` nodes (c1
// bootstraps, c2 and c3 join) in one gossip pool, and waits until all three
// vote.
func (d *demo) startControlPlane(ctx context.Context) error {
	tokens, proxyToken, gossipKey, operator, err := d.secrets()
	if err != nil {
		return err
	}
	d.cleanups = append(d.cleanups, d.ps.stopAll)
	d.api = &controlAPI{token: operator, hc: &http.Client{Timeout: 30 * time.Second}}
	var join, gossipJoin string
	for i := 1; i <= 3; i++ {
		api, err1 := freeAddr()
		raft, err2 := freeAddr()
		gossip, err3 := freeAddr()
		if err := errors.Join(err1, err2, err3); err != nil {
			return err
		}
		id := fmt.Sprintf("c%d", i)
		args := []string{"control", "--id", id, "--raft-addr", raft, "--api-addr", api,
			"--data-dir", filepath.Join(d.cfg.Dir, id), "--tokens", tokens, "--raft-stabilization", "500ms",
			"--gossip-addr", gossip, "--gossip-key-file", gossipKey, "--proxy-token-file", proxyToken}
		if i == 1 {
			args = append(args, "--bootstrap")
			join, gossipJoin = "http://"+api, gossip
		} else {
			args = append(args, "--join", join, "--gossip-join", gossipJoin)
		}
		p, err := d.ps.start("control-"+id, d.cfg.ZkMigrate, args...)
		if err != nil {
			return err
		}
		d.ctl = append(d.ctl, &ctlNode{id: id, api: api, gossip: gossip, args: args, proc: p})
		d.api.urls = append(d.api.urls, "http://"+api)
		if err := waitUntil(ctx, 30*time.Second, "control node "+id+" serving", func() bool {
			resp, err := http.Get("http://" + api + "/healthz")
			if err == nil {
				resp.Body.Close()
			}
			if err != nil {
				return !p.running()
			}
			// Its gossip port too: the next node and the proxies join
			// the pool through it, and a refused join is fatal to them.
			c, err := net.DialTimeout("tcp", gossip, time.Second)
			if err == nil {
				c.Close()
			}
			return err == nil || !p.running()
		}); err != nil || !p.running() {
			return fmt.Errorf("sandbox: control node %s did not start: %v\n%s", id, err, d.ps.tail("control-"+id, 10))
		}
	}
	if err := waitUntil(ctx, 60*time.Second, "three voting control nodes", func() bool { return d.api.voters(ctx) == 3 }); err != nil {
		return err
	}
	// The proxies join through every control node, as a deployment lists
	// them: with c1 alone, a proxy restarted while c1 was down (chaos:
	// control and proxy faults together) waited for c1 before it served,
	// 8 s, and the framework's detector session expired meanwhile.
	var seeds []string
	for _, n := range d.ctl {
		seeds = append(seeds, n.gossip)
	}
	d.gossipJoin, d.proxyToken, d.gossipKey = strings.Join(seeds, ","), proxyToken, gossipKey
	d.say("control plane: 3 zk-migrate control nodes (Raft), APIs %s", strings.Join(d.api.urls, " "))
	return nil
}

// startProxies starts the `zk-migrate proxy` processes in two-ensemble
// mode (primary A, mirroring to B), each in the gossip pool with its admin
// endpoint, so the control plane's flip barrier finds them, and with a
// state directory: Proxies in front of the masters and agents, and one
// more on the framework's host, which the framework and the probe client
// use (the one a chaos run kills and restarts: its clients come back to
// it, as to a host's sidecar).
func (d *demo) startProxies(ctx context.Context) error {
	d.hops = map[string][]*hop{}
	for i := 1; i <= d.cfg.Proxies+1; i++ {
		listen, err1 := freeAddr()
		admin, err2 := freeAddr()
		metrics, err3 := freeAddr()
		gossip, err4 := freeAddr()
		if err := errors.Join(err1, err2, err3, err4); err != nil {
			return err
		}
		name := fmt.Sprintf("proxy-%d", i)
		if i > d.cfg.Proxies {
			name = "proxy-framework"
		}
		// The proxy reaches each server of B through a hop of its own,
		// which chaos can delay or cut (a partition between this proxy
		// and B).
		var targets []string
		for _, b := range d.b.Addrs() {
			h, err := newHop(b)
			if err != nil {
				return err
			}
			d.cleanups = append(d.cleanups, h.Close)
			d.hops[name] = append(d.hops[name], h)
			targets = append(targets, h.addr())
		}
		pr := &proxyProc{name: name, listen: listen, args: []string{"proxy", "--listen", listen,
			"--source", d.a.ConnectString(), "--target", strings.Join(targets, ","),
			"--admin-addr", admin, "--admin-token-file", d.proxyToken, "--state-dir", filepath.Join(d.cfg.Dir, name+".state"),
			"--metrics-addr", metrics, "--name", name,
			"--gossip-addr", gossip, "--gossip-join", d.gossipJoin, "--gossip-key-file", d.gossipKey}, metrics: metrics}
		if err := d.startProxy(ctx, pr); err != nil {
			return err
		}
		if i > d.cfg.Proxies {
			d.fwProxy = pr
		} else {
			d.proxies = append(d.proxies, listen)
		}
		d.proxyLogs = append(d.proxyLogs, name)
		d.metrics = append(d.metrics, metrics)
		d.admins = append(d.admins, admin)
	}
	d.say("%d zk-migrate proxies in two-ensemble mode (primary A, mirroring to B): %s for the masters and agents, %s for the framework",
		d.cfg.Proxies+1, strings.Join(d.proxies, " "), d.fwProxy.listen)
	return nil
}

// proxyProc is one `zk-migrate proxy` process and how to start it again.
type proxyProc struct {
	name, listen string
	metrics      string // its /metrics address
	args         []string
	proc         *proc
}

// startProxy starts (or restarts) a proxy and waits until it answers ruok.
func (d *demo) startProxy(ctx context.Context, pr *proxyProc) error {
	p, err := d.ps.start(pr.name, d.cfg.ZkMigrate, pr.args...)
	if err != nil {
		return err
	}
	pr.proc = p
	if err := waitUntil(ctx, 20*time.Second, pr.name+" serving", func() bool {
		out, err := zktest.FourLetterWord(pr.listen, "ruok", time.Second)
		return (err == nil && out == "imok") || !p.running()
	}); err != nil || !p.running() {
		return fmt.Errorf("sandbox: %s did not start: %v\n%s", pr.name, err, d.ps.tail(pr.name, 10))
	}
	return nil
}

// zkURL is the Mesos processes' --zk: every proxy, as Mesos lists the
// ensemble's servers (the C client picks one and moves on if it fails).
func (d *demo) zkURL() string { return "zk://" + strings.Join(d.proxies, ",") + "/mesos" }

func (d *demo) masterArgs() []string {
	return []string{"--zk_session_timeout=" + d.cfg.SessionTimeout.String(), "--agent_ping_timeout=3s", "--max_agent_ping_timeouts=5"}
}

func (d *demo) agentArgs() []string {
	return []string{"--heartbeat=250ms", "--zk_session_timeout=" + d.cfg.SessionTimeout.String()}
}

// startMesos declares both sides' processes (three masters and Agents
// agents each; B's are started by the control plane's phases), starts A's
// through the same local deployer the control plane uses, and a framework
// keeping Tasks tasks running, killing and replacing one every 2 s.
func (d *demo) startMesos(ctx context.Context) error {
	d.dep = &deployer.Local{Binary: d.cfg.MesosSim, Dir: filepath.Join(d.cfg.Dir, "mesos"), ZK: d.zkURL(), Quorum: 2,
		MasterArgs: d.masterArgs(), AgentArgs: d.agentArgs()}
	for i, s := range []string{"a", "b"} {
		for j := 1; j <= 3; j++ {
			port, err := zktest.StablePort()
			if err != nil {
				return err
			}
			d.sides[i].masters = append(d.sides[i].masters, deployer.Process{Kind: deployer.Master, Name: fmt.Sprintf("%s-master-%d", s, j),
				Side: strings.ToUpper(s), Host: "127.0.0.1", Port: port, Hostname: "127.0.0.1"})
		}
		for j := 1; j <= d.cfg.Agents; j++ {
			port, err := zktest.StablePort()
			if err != nil {
				return err
			}
			d.sides[i].agents = append(d.sides[i].agents, deployer.Process{Kind: deployer.Agent, Name: fmt.Sprintf("%s-agent-%d", s, j),
				Side: strings.ToUpper(s), Host: "127.0.0.1", Port: port, Hostname: fmt.Sprintf("agent-%s%d", s, j)})
		}
	}
	d.cleanups = append(d.cleanups, func() {
		// SIGTERM every Mesos process still running (the deployer's stop),
		// whichever side: the demo leaves nothing behind.
		var wg sync.WaitGroup
		for _, side := range d.sides {
			for _, p := range append(append([]deployer.Process{}, side.agents...), side.masters...) {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := d.dep.Stop(context.Background(), p); err != nil {
						if pid := d.dep.PID(p); pid != 0 {
							_ = syscall.Kill(pid, syscall.SIGKILL)
						}
					}
				}()
			}
		}
		wg.Wait()
	})
	d.say("starting Mesos on A (emulated: bin/mesos-sim, ZooKeeper through the real C client): 3 masters (quorum 2), %d agents, zk %s",
		d.cfg.Agents, d.zkURL())
	for _, p := range append(append([]deployer.Process{}, d.sides[0].masters...), d.sides[0].agents...) {
		if err := d.dep.Start(ctx, p); err != nil {
			return fmt.Errorf("sandbox: %w", err)
		}
	}
	port, err := zktest.StablePort()
	if err != nil {
		return err
	}
	d.fwURL = "http://127.0.0.1:" + strconv.Itoa(port)
	fw, err := d.ps.start("framework", d.cfg.MesosSim, "framework", "--master", "zk://"+d.fwProxy.listen+"/mesos", "--port", strconv.Itoa(port),
		"--tasks", strconv.Itoa(d.cfg.Tasks), "--churn", "2s", "--zk_session_timeout", d.cfg.SessionTimeout.String(),
		"--history", filepath.Join(d.cfg.Dir, "tasks.jsonl"))
	if err != nil {
		return err
	}
	if err := waitUntil(ctx, 60*time.Second, fmt.Sprintf("%d tasks running on A's agents", d.cfg.Tasks), func() bool {
		s, err := readFramework(ctx, d.fwURL)
		return (err == nil && s.Active["TASK_RUNNING"] >= d.cfg.Tasks) || !fw.running()
	}); err != nil || !fw.running() {
		return fmt.Errorf("sandbox: the framework's tasks did not start: %v\n%s", err, d.ps.tail("framework", 10))
	}
	return nil
}

// mesosNames are the Mesos processes' log names (the deployer's dir) and
// the framework's (the demo's dir).
func (d *demo) mesosNames() []string {
	var out []string
	for _, side := range d.sides {
		for _, p := range append(append([]deployer.Process{}, side.masters...), side.agents...) {
			out = append(out, p.Name)
		}
	}
	return out
}
