package server

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/zk-migrate/zk-migrate/alert"
	"github.com/zk-migrate/zk-migrate/control"
	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// MesosLeader returns the leading master's node under path: the lowest
// json.info_ sequence, as Mesos elects. ok is false when path has no
// contenders (not a Mesos root).
func MesosLeader(ctx context.Context, c *zkclient.Conn, path string) (leader string, ok bool, err error) {
	kids, _, err := c.Children(ctx, path)
	if jute.CodeOf(err) == jute.CodeNoNode {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	var infos []string
	for _, k := range kids {
		if strings.HasPrefix(k, "json.info_") {
			infos = append(infos, k)
		}
	}
	if len(infos) == 0 {
		return "", false, nil
	}
	sort.Strings(infos)
	return infos[0], true, nil
}

// leaderWatch remembers the Mesos leader per path and reports changes.
type leaderWatch struct {
	last map[string]string
	// observe, if set, is told each leader read and whether it is an
	// unexpected change (the metrics).
	observe func(path, leader string, unexpected bool)
}

// check reads the leaders on the primary ensemble and alerts on a change
// outside phases 2 and 3, where leadership moves by design.
func (w *leaderWatch) check(ctx context.Context, c *zkclient.Conn, m *control.Migration, paths []string, notify func(alert.Alert)) error {
	if w.last == nil {
		w.last = map[string]string{}
	}
	for _, p := range paths {
		leader, ok, err := MesosLeader(ctx, c, p)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		prev, seen := w.last[p]
		w.last[p] = leader
		expected := m.Step == control.StepMastersOnB || m.Step == control.StepMastersOffA
		unexpected := seen && prev != leader && !expected
		if w.observe != nil {
			w.observe(p, leader, unexpected)
		}
		if unexpected {
			notify(alert.Alert{Kind: "leader_change", Severity: alert.Warning, Migration: m.ID,
				Summary:  fmt.Sprintf("Mesos leader under %s changed from %s to %s during %s", p, prev, leader, m.Step),
				DedupKey: "leader_change/" + m.ID + "/" + leader})
		}
	}
	return nil
}
