package server

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strings"

	"github.com/zk-migrate/zk-migrate/alert"
	"github.com/zk-migrate/zk-migrate/control"
)

// mesosWatch is the health loop's view of the Mesos cluster through its
// operator API (migration.yaml's mesos section), checked every
// health_check_interval_sec while the sync runs:
//
//   - task failures: a task newly TASK_FAILED, TASK_LOST (or another state
//     the framework did not ask for) in GET_TASKS' completed tasks raises
//     task_failure (error). Failures already there at this watch's first
//     check are logged, not alerted: a new control leader would otherwise
//     alert the whole history again;
//   - task count: fewer active tasks than the most seen, three checks in a
//     row, raises task_count (warning);
//   - leader stability: no master answering as leader, or more than one,
//     raises mesos_leader (critical); leader changes are the ZooKeeper
//     watch's (leaderWatch);
//   - framework connectivity: a framework seen connected that is now
//     disconnected or gone raises framework_disconnected (warning).
type mesosWatch struct {
	api        *mesosAPI
	log        *slog.Logger
	started    bool
	failed     map[string]bool
	peak, low  int
	frameworks map[string]string // id -> name, connected at the last check
}

func newMesosWatch(c *control.Mesos, log *slog.Logger) *mesosWatch {
	var urls []string
	for _, s := range []control.MesosSide{c.Sides.A, c.Sides.B} {
		for _, p := range s.Masters {
			urls = append(urls, fmt.Sprintf("http://%s:%d", p.Host, p.Port))
		}
	}
	return &mesosWatch{api: newMesosAPI(urls), log: log, failed: map[string]bool{}, frameworks: map[string]string{}}
}

// check runs every check once and alerts through notify.
func (w *mesosWatch) check(ctx context.Context, m *control.Migration, notify func(alert.Alert)) {
	lead, _ := w.api.leaders(ctx)
	if len(lead) != 1 {
		notify(alert.Alert{Kind: "mesos_leader", Severity: alert.Critical, Migration: m.ID,
			Summary:  fmt.Sprintf("%d Mesos masters answer as leader during %s (want exactly one): %s", len(lead), m.Step, strings.Join(lead, ", ")),
			DedupKey: fmt.Sprintf("mesos_leader/%s/%d", m.ID, len(lead))})
		return // the other calls need the leader
	}
	active, completed, err := w.api.tasks(ctx)
	if err != nil {
		w.log.Warn("mesos health: GET_TASKS", "migration", m.ID, "err", err)
		return
	}
	var fresh []string
	for _, t := range completed {
		if !t.failed() || w.failed[t.TaskID.Value] {
			continue
		}
		w.failed[t.TaskID.Value] = true
		fresh = append(fresh, fmt.Sprintf("%s %s on agent %s", t.TaskID.Value, t.State, t.AgentID.Value))
	}
	sort.Strings(fresh)
	if len(fresh) > 0 && !w.started {
		w.log.Warn("mesos health: task failures before this node watched", "migration", m.ID, "tasks", fresh)
	} else if len(fresh) > 0 {
		notify(alert.Alert{Kind: "task_failure", Severity: alert.Error, Migration: m.ID,
			Summary:  fmt.Sprintf("%d Mesos task(s) failed during %s: %s", len(fresh), m.Step, strings.Join(fresh, ", ")),
			DedupKey: "task_failure/" + m.ID + "/" + fresh[0]})
	}
	w.started = true
	if n := len(active); n >= w.peak {
		w.peak, w.low = n, 0
	} else if w.low++; w.low == 3 {
		notify(alert.Alert{Kind: "task_count", Severity: alert.Warning, Migration: m.ID,
			Summary:  fmt.Sprintf("%d active Mesos tasks for 3 checks during %s; %d ran before", n, m.Step, w.peak),
			DedupKey: fmt.Sprintf("task_count/%s/%d", m.ID, w.peak)})
	}
	fws, err := w.api.frameworks(ctx)
	if err != nil {
		w.log.Warn("mesos health: GET_FRAMEWORKS", "migration", m.ID, "err", err)
		return
	}
	now := map[string]string{}
	for _, f := range fws {
		if f.Connected {
			now[f.FrameworkInfo.ID.Value] = f.FrameworkInfo.Name
		}
	}
	for id, name := range w.frameworks {
		if _, ok := now[id]; !ok {
			notify(alert.Alert{Kind: "framework_disconnected", Severity: alert.Warning, Migration: m.ID,
				Summary:  fmt.Sprintf("Mesos framework %s (%s) is no longer connected to the leading master during %s", name, id, m.Step),
				DedupKey: "framework_disconnected/" + m.ID + "/" + id})
		}
	}
	w.frameworks = now
}
