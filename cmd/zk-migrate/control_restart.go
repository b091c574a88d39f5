package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/zk-migrate/zk-migrate/raftstore"
)

// startMode decides how a control node starts: from the Raft state its
// --data-dir already holds (restart: true; --bootstrap or --join are then
// not needed, and --join is only a harmless repeat), or as a new member
// with exactly one of --bootstrap or --join.
func startMode(c *cli.Context) (restart bool, err error) {
	boot, join := c.Bool("bootstrap"), c.String("join") != ""
	if boot && join {
		return false, usageError("give --bootstrap (first node) or --join URL (the others), not both")
	}
	dir := filepath.Clean(c.String("data-dir"))
	has, err := raftstore.HasState(dir)
	if err != nil {
		return false, fmt.Errorf("--data-dir %s: %w (is another zk-migrate control running on it?)", dir, err)
	}
	switch {
	case has && !boot && !join:
		return true, nil
	case has:
		// The state wins: a bootstrapped cluster is not bootstrapped again,
		// and a join with the same id and address changes nothing.
		return false, nil
	case !boot && !join:
		return false, usageError("--data-dir %s holds no Raft state: give --bootstrap (first node of a new cluster) or --join URL (a new member); to restart a node, give the --data-dir it ran with", dir)
	}
	return false, nil
}

// announceRestart makes sure the cluster knows a restarted node's API
// URL (it may have changed): once a leader is known and this node has
// caught up, it joins again through its own API (forwarded to the leader;
// the same id and Raft address is a no-op for Raft) if the replicated
// state names another URL. A different Raft address is refused by the
// leader (409): remove the node first.
func announceRestart(ctx context.Context, client *http.Client, node *raftstore.Node, id, api, token string) error {
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		if _, leader := node.Leader(); leader != "" && node.State().Nodes[leader] != "" {
			break
		}
		select {
		case <-wctx.Done():
			return nil // no quorum yet: the node serves and catches up once there is one
		case <-time.After(100 * time.Millisecond):
		}
	}
	if !node.IsLeader() { // apply what the leader has before reading our entry
		_ = waitCaughtUp(wctx, node)
	}
	if node.State().Nodes[id] == api {
		return nil
	}
	return joinCluster(ctx, client, api, token, id, node.Addr(), api)
}

// waitCaughtUp waits until this node has applied its whole log.
func waitCaughtUp(ctx context.Context, node *raftstore.Node) error {
	for {
		st := node.Stats()
		if st.AppliedIndex >= st.LastIndex && st.LastContact >= 0 && st.LastContact < 2*time.Second {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// joinResult reads the answer to a join (and closes it): nil when
// joined; final when retrying cannot help (the id or Raft address belongs
// to another member: the leader's reply says how to move a node).
func joinResult(resp *http.Response) (final bool, err error) {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		return false, nil
	}
	err = fmt.Errorf("join: %s: %s", resp.Status, strings.TrimSpace(string(b)))
	return resp.StatusCode == http.StatusConflict && strings.Contains(string(b), "already a member"), err
}
