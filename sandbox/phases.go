package sandbox

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/zk-migrate/zk-migrate/control"
	"github.com/zk-migrate/zk-migrate/deployer"
)

// migrationYAML is the demo's migration.yaml: the Mesos section names both
// sides' processes and the local deployer, so phases 2 to 6 are the
// control plane's own Mesos-aware runners.
func (d *demo) migrationYAML() string {
	side := func(s int) string {
		var ms, ags []string
		for _, p := range d.sides[s].masters {
			ms = append(ms, fmt.Sprintf("{name: %s, host: %s, port: %d}", p.Name, p.Host, p.Port))
		}
		for _, p := range d.sides[s].agents {
			ags = append(ags, fmt.Sprintf("{name: %s, host: %s, port: %d, hostname: %s}", p.Name, p.Host, p.Port, p.Hostname))
		}
		return fmt.Sprintf("masters: [%s]\n      agents: [%s]", strings.Join(ms, ", "), strings.Join(ags, ", "))
	}
	return fmt.Sprintf(`# written by zk-migrate demo
migration: {id: %s, source_zk: "%s", target_zk: "%s", paths: [/mesos, /demo], health_check_interval_sec: 1}
sync: {lag_threshold_ms: 1000}
mesos:
  zk: "%s"
  quorum: 2
  timeout_sec: 60
  sides:
    a:
      %s
    b:
      %s
  deployer:
    kind: local
    binary: %s
    dir: %s
    master_args: [%s]
    agent_args: [%s]
`, demoID, d.a.ConnectString(), d.b.ConnectString(), d.zkURL(), side(0), side(1), d.dep.Binary, d.dep.Dir,
		strings.Join(d.masterArgs(), ", "), strings.Join(d.agentArgs(), ", "))
}

// migrate creates the migration and runs it: phase 1, the flip, phases 2
// to 5, and either a rollback to phase 1 at RollbackAt or (phase 6 is left
// to run's caller, after the digest check).
func (d *demo) migrate(ctx context.Context) error {
	yaml := d.migrationYAML()
	path := filepath.Join(d.cfg.Dir, "migration.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	d.say("$ zk-migrate start --config %s", path)
	if err := d.api.do(ctx, http.MethodPost, "/api/v1/migrations", []byte(yaml), nil); err != nil {
		return fmt.Errorf("sandbox: create the migration: %w", err)
	}
	d.step.Store(control.StepDeployB.String())
	if err := d.api.do(ctx, http.MethodPost, "/api/v1/migrations/"+demoID+"/start", nil, nil); err != nil {
		return fmt.Errorf("sandbox: start: %w", err)
	}
	if _, err := d.waitStep(ctx, control.StepDeployB, control.StatusSucceeded); err != nil {
		return err
	}
	if h, _, err := d.mirrorStats(ctx); err == nil {
		d.mirrorAtSync = &h
	}
	// The flip's guard refuses (409) until the sync has seen a heartbeat
	// cross each way and the digests are equal: retried, as an operator
	// would.
	d.say("$ zk-migrate advance --phase flip --confirm")
	d.step.Store(control.StepFlip.String())
	refused := ""
	if err := waitUntil(ctx, 60*time.Second, "the flip accepted", func() bool {
		err := d.api.step(ctx, demoID, "advance", "flip")
		if err != nil && strings.Contains(err.Error(), "flip refused") {
			if refused == "" {
				refused = err.Error()
				d.say("flip refused for now (%s); retrying", firstLine(err.Error()))
			}
			return false
		}
		return true
	}); err != nil {
		return fmt.Errorf("%w: %s", err, refused)
	}
	d.chaos(ctx, AtFlip)
	m, err := d.waitStep(ctx, control.StepFlip, control.StatusSucceeded)
	// Under faults the flip's guard may find the ensembles apart inside
	// the barrier (a new control leader's sync has agreed on nothing yet,
	// a killed proxy's last mirror write is missing on B) and abort: the
	// primary stays A and nothing is lost. An operator runs the flip again;
	// so does the demo, a few times (the report's phases list each failed
	// attempt with its reason).
	for try := 1; err != nil && len(d.cfg.Chaos) > 0 && try <= maxFlipRetries &&
		m.Step == control.StepFlip && m.Status == control.StatusFailed && m.Primary == "A" && strings.Contains(m.LastError, "flip aborted"); try++ {
		d.say("the flip was aborted, primary stays A (%s); running it again, as an operator would", firstLine(m.LastError))
		d.say("$ zk-migrate retry --confirm")
		if err := d.api.do(ctx, http.MethodPost, "/api/v1/migrations/"+demoID+"/retry", nil, nil); err != nil {
			return fmt.Errorf("sandbox: retry the flip: %w", err)
		}
		m, err = d.waitStep(ctx, control.StepFlip, control.StatusSucceeded)
	}
	if err != nil {
		return err
	}
	if m.Flip != nil {
		d.say("flip done: epoch %d, primary %s, proxies acknowledged %d of %d, fenced %d",
			m.Flip.Epoch, m.Primary, len(m.Flip.Acked), len(m.Flip.Expected), len(m.Flip.Fenced))
	}
	for phase := 2; phase <= 5; phase++ {
		if err := d.advance(ctx, phase); err != nil {
			return err
		}
		if phase == d.cfg.RollbackAt {
			return d.rollback(ctx)
		}
	}
	return nil
}

// maxFlipRetries bounds the flips a chaos run runs again after an abort.
const maxFlipRetries = 3

// advance enters a phase and waits until it succeeded.
func (d *demo) advance(ctx context.Context, phase int) error {
	step, err := control.StepForPhase(phase)
	if err != nil {
		return err
	}
	d.say("$ zk-migrate advance --phase %d --confirm", phase)
	d.step.Store(step.String())
	if err := d.api.step(ctx, demoID, "advance", fmt.Sprint(phase)); err != nil {
		return fmt.Errorf("sandbox: advance to phase %d: %w", phase, err)
	}
	d.chaos(ctx, fmt.Sprint(phase))
	want := control.StatusSucceeded
	if step == control.StepRemoveA {
		step, want = control.StepDone, control.StatusCompleted
	}
	_, err = d.waitStep(ctx, step, want)
	return err
}

// rollback rolls the migration back to phase 1 (across the flip: primary A
// again, Mesos back on A's side) and waits until it is there.
func (d *demo) rollback(ctx context.Context) error {
	d.say("$ zk-migrate rollback --to-phase 1 --confirm   (ROLLBACK=%d)", d.cfg.RollbackAt)
	d.step.Store("rollback")
	if err := d.api.step(ctx, demoID, "rollback", "1"); err != nil {
		return fmt.Errorf("sandbox: rollback: %w", err)
	}
	d.chaos(ctx, AtRollback)
	m, err := d.waitStep(ctx, control.StepDeployB, control.StatusSucceeded)
	if err != nil {
		return err
	}
	d.say("rolled back: primary %s (epoch %d), Mesos runs on A's side again", m.Primary, m.Epoch)
	return nil
}

// waitStep polls the migration (every 200 ms) until it is at step with
// status, printing each change of step or status; a failed step is an
// error naming its last error.
func (d *demo) waitStep(ctx context.Context, step control.Step, status control.Status) (control.Migration, error) {
	var last string
	deadline := time.Now().Add(5 * time.Minute)
	for {
		m, err := d.api.migration(ctx, demoID)
		if err != nil {
			return m, err
		}
		if now := m.StepName + " " + string(m.Status); now != last {
			last = now
			d.say("  %-22s %s", m.StepName, m.Status)
		}
		if m.Step == step && m.Status == status {
			return m, nil
		}
		if m.Status == control.StatusFailed {
			return m, fmt.Errorf("sandbox: %s failed: %s", m.StepName, m.LastError)
		}
		if time.Now().After(deadline) {
			return m, fmt.Errorf("sandbox: %s never reached %s (now %s %s)", step, status, m.StepName, m.Status)
		}
		select {
		case <-ctx.Done():
			return m, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// progress prints, every 5 s, where Mesos runs and how its tasks are.
func (d *demo) progress(ctx context.Context, lw *leaderWatch) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		fw, err := readFramework(ctx, d.fwURL)
		if err != nil {
			continue
		}
		d.say("  mesos: leader %s, masters %s, agents %s, tasks running %d, failed %d",
			lw.leader(), d.running(ctx, deployer.Master), d.running(ctx, deployer.Agent), fw.Active["TASK_RUNNING"], fw.Failed)
	}
}

// running lists the processes of a kind that run now.
func (d *demo) running(ctx context.Context, kind deployer.Kind) string {
	var b bytes.Buffer
	for _, side := range d.sides {
		ps := side.masters
		if kind == deployer.Agent {
			ps = side.agents
		}
		for _, p := range ps {
			if ok, _ := d.dep.Running(ctx, p); ok {
				if b.Len() > 0 {
					b.WriteByte(',')
				}
				b.WriteString(strings.NewReplacer("-master-", "-m", "-agent-", "-ag").Replace(p.Name))
			}
		}
	}
	return b.String()
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
