package server

import (
	"context"
	"fmt"
	"strings"

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
