package server

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/zk-migrate/zk-migrate/deployer"
	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// zkPath is the znode path of a zk:// URL (zk://[user:pw@]hosts/path).
func zkPath(u string) string {
	rest := strings.TrimPrefix(u, "zk://")
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		rest = rest[at+1:]
	}
	if i := strings.Index(rest, "/"); i >= 0 {
		return strings.TrimRight(rest[i:], "/")
	}
	return ""
}

// membersInZK counts, under path on an ensemble, the masters contending
// (json.info_ children) and the distinct log replicas (log_replicas/
// children's UPIDs): what Mesos itself sees, whatever runs.
func membersInZK(ctx context.Context, connect, path string, auth []zkclient.Auth) (infos, replicas int, err error) {
	c, err := zkclient.Dial(ctx, strings.Split(connect, ","), zkclient.Options{Auth: auth})
	if err != nil {
		return 0, 0, fmt.Errorf("reading %s on %s: %w", path, connect, err)
	}
	defer c.Close()
	kids, _, err := c.Children(ctx, path)
	if err != nil && jute.CodeOf(err) != jute.CodeNoNode {
		return 0, 0, fmt.Errorf("reading %s on %s: %w", path, connect, err)
	}
	for _, k := range kids {
		if strings.HasPrefix(k, "json.info_") {
			infos++
		}
	}
	reps, _, err := c.Children(ctx, path+"/log_replicas")
	if err != nil && jute.CodeOf(err) != jute.CodeNoNode {
		return 0, 0, fmt.Errorf("reading %s/log_replicas on %s: %w", path, connect, err)
	}
	upids := map[string]bool{}
	for _, r := range reps {
		data, _, err := c.Get(ctx, path+"/log_replicas/"+r)
		if jute.CodeOf(err) == jute.CodeNoNode {
			continue
		}
		if err != nil {
			return 0, 0, fmt.Errorf("reading %s/log_replicas/%s on %s: %w", path, r, connect, err)
		}
		upids[string(data)] = true
	}
	return infos, len(upids), nil
}

// zkAgrees checks that ZooKeeper shows as many contending masters and log
// replicas as masters run: a znode that outlives its master (one SIGKILLed
// within its session timeout, or a deleted znode copied back from the
// other ensemble) would make Mesos elect a dead leader or count a replica
// that breaks the quorum rule.
func (c *mesosCluster) zkAgrees(ctx context.Context, running int) error {
	if c.primary == "" {
		return nil
	}
	infos, replicas, err := membersInZK(ctx, c.primary, zkPath(c.cfg.ZK), c.auth)
	if err != nil {
		return err
	}
	if infos != running || replicas != running {
		return fmt.Errorf("ZooKeeper (%s) shows %d json.info_ and %d log replicas under %s for %d running masters: "+
			"a master's znodes outlived it (a master killed within its session timeout, or znodes the sync copied back)",
			c.primary, infos, replicas, zkPath(c.cfg.ZK), running)
	}
	return nil
}

// onlyRunningOn checks that an ensemble holds no json.info_ and no log
// replica of a master that does not run (matched by the address in the
// MasterInfo's pid and in the replica's UPID), and no more of either than
// masters run. Before the rollback's reverse flip makes A the primary
// again, A must pass it: a stopped master's znodes left there (its proxy
// could not close its shadow session on A while A's leader was down, so
// they last until that session expires) would be seen by every master
// after the flip, a dead leader elected or a replica beyond 2q-1.
func (c *mesosCluster) onlyRunningOn(ctx context.Context, connect string, run []deployer.Process) error {
	path := zkPath(c.cfg.ZK)
	zc, err := zkclient.Dial(ctx, strings.Split(connect, ","), zkclient.Options{Auth: c.auth})
	if err != nil {
		return fmt.Errorf("reading %s on %s: %w", path, connect, err)
	}
	defer zc.Close()
	running := map[string]bool{}
	for _, p := range run {
		running[fmt.Sprintf("%s:%d", p.Host, p.Port)] = true
	}
	var stale []string
	infos, replicas := 0, 0
	check := func(dir, prefix string, addr func([]byte) string) error {
		kids, _, err := zc.Children(ctx, dir)
		if jute.CodeOf(err) == jute.CodeNoNode {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading %s on %s: %w", dir, connect, err)
		}
		for _, k := range kids {
			if !strings.HasPrefix(k, prefix) {
				continue
			}
			data, _, err := zc.Get(ctx, dir+"/"+k)
			if jute.CodeOf(err) == jute.CodeNoNode {
				continue
			}
			if err != nil {
				return fmt.Errorf("reading %s/%s on %s: %w", dir, k, connect, err)
			}
			if prefix == "" {
				replicas++
			} else {
				infos++
			}
			if a := addr(data); !running[a] {
				stale = append(stale, fmt.Sprintf("%s/%s (%s)", dir, k, a))
			}
		}
		return nil
	}
	afterAt := func(s string) string {
		if i := strings.LastIndex(s, "@"); i >= 0 {
			return s[i+1:]
		}
		return s
	}
	if err := check(path, "json.info_", func(b []byte) string {
		var info struct {
			PID string `json:"pid"`
		}
		if json.Unmarshal(b, &info) != nil {
			return "unreadable MasterInfo"
		}
		return afterAt(info.PID)
	}); err != nil {
		return err
	}
	if err := check(path+"/log_replicas", "", func(b []byte) string { return afterAt(string(b)) }); err != nil {
		return err
	}
	if len(stale) > 0 {
		return fmt.Errorf("%s holds znodes of masters that do not run: %s", connect, strings.Join(stale, ", "))
	}
	if infos > len(run) || replicas > len(run) {
		return fmt.Errorf("%s shows %d json.info_ and %d log replicas under %s for %d running masters", connect, infos, replicas, path, len(run))
	}
	return nil
}
