package raftstore

import (
	"context"
	"fmt"
	"log/slog"
	"time"
)

// Autopilot promotes non-voters to voters on the leader once they have
// caught up, the way Consul's autopilot does with hashicorp/raft: a
// server is healthy when it answers, is in the leader's term, trails the
// leader's log by at most MaxTrailingLogs entries and heard from the
// leader within LastContactThreshold; it is promoted after it has stayed
// healthy for StabilizationTime. A node that never catches up (dead,
// unreachable, not a Raft node at all) stays a non-voter and never counts
// against the quorum.
type Autopilot struct {
	Node *Node
	// Stats asks server id (at its Raft address addr) for its ServerStats
	// (the control plane asks the node's API). It must honour ctx.
	Stats func(ctx context.Context, id, addr string) (ServerStats, error)
	// LastContactThreshold (default: the Raft heartbeat timeout, 1 s),
	// MaxTrailingLogs (default 250), StabilizationTime (default 10 s),
	// Interval between checks (default 500 ms).
	LastContactThreshold time.Duration
	MaxTrailingLogs      uint64
	StabilizationTime    time.Duration
	Interval             time.Duration
	Logger               *slog.Logger
}

// Run checks the non-voters until ctx ends; it acts only while Node leads.
func (a *Autopilot) Run(ctx context.Context) error {
	if a.LastContactThreshold == 0 {
		a.LastContactThreshold = time.Second
		if hb := a.Node.cfg.HeartbeatTimeout; hb > 0 {
			a.LastContactThreshold = hb
		}
	}
	if a.MaxTrailingLogs == 0 {
		a.MaxTrailingLogs = 250
	}
	if a.StabilizationTime == 0 {
		a.StabilizationTime = 10 * time.Second
	}
	if a.Interval == 0 {
		a.Interval = 500 * time.Millisecond
	}
	if a.Logger == nil {
		a.Logger = a.Node.cfg.Logger
	}
	healthySince := map[string]time.Time{}
	lastWhy := map[string]string{}
	t := time.NewTicker(a.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		if !a.Node.IsLeader() {
			clear(healthySince)
			continue
		}
		fut := a.Node.raft.GetConfiguration()
		if fut.Error() != nil {
			continue
		}
		index := fut.Index()
		servers, err := a.Node.Servers()
		if err != nil {
			continue
		}
		leader := a.Node.Stats()
		seen := map[string]bool{}
		for _, s := range servers {
			if s.Voter {
				continue
			}
			seen[s.ID] = true
			why := a.lagging(ctx, s, leader)
			if why != "" {
				delete(healthySince, s.ID)
				if lastWhy[s.ID] != why {
					a.Logger.Info("raft: non-voter not promoted yet", "node", s.ID, "raft", s.Address, "reason", why)
					lastWhy[s.ID] = why
				}
				continue
			}
			lastWhy[s.ID] = ""
			since, ok := healthySince[s.ID]
			if !ok {
				healthySince[s.ID] = time.Now()
				continue
			}
			if time.Since(since) < a.StabilizationTime {
				continue
			}
			if err := a.Node.promote(s.ID, s.Address, index); err != nil {
				a.Logger.Warn("raft: promotion failed", "node", s.ID, "err", err)
				continue
			}
			a.Logger.Info("raft: non-voter caught up and promoted to voter", "node", s.ID, "raft", s.Address,
				"healthy_for", time.Since(since).Round(time.Millisecond))
			delete(healthySince, s.ID)
			break // the configuration changed: re-read it next time
		}
		for id := range healthySince {
			if !seen[id] {
				delete(healthySince, id)
			}
		}
	}
}

// lagging says why s has not caught up with the leader, or "".
func (a *Autopilot) lagging(ctx context.Context, s Server, leader ServerStats) string {
	sctx, cancel := context.WithTimeout(ctx, a.Interval+time.Second)
	defer cancel()
	st, err := a.Stats(sctx, s.ID, s.Address)
	switch {
	case err != nil:
		return fmt.Sprintf("no stats: %v", err)
	case st.Term != leader.Term:
		return fmt.Sprintf("in term %d, the leader in %d", st.Term, leader.Term)
	case st.LastIndex+a.MaxTrailingLogs < leader.LastIndex:
		return fmt.Sprintf("%d log entries behind", leader.LastIndex-st.LastIndex)
	case st.LastContact < 0:
		return "never heard from the leader"
	case st.LastContact > a.LastContactThreshold:
		return fmt.Sprintf("last contact with the leader %v ago", st.LastContact.Round(time.Millisecond))
	}
	return ""
}
