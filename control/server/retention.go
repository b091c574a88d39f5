package server

import (
	"context"
	"log/slog"
	"time"

	"github.com/zk-migrate/zk-migrate/control"
)

// DefaultAuditRetention is how long the audit trail keeps an entry: the
// product document asks for a year.
const DefaultAuditRetention = 365 * 24 * time.Hour

// AuditPruner enforces the audit retention: on the leader, at start and
// every Interval, it proposes an audit-prune (cutoff = now - Retention)
// when some entry is older than the cutoff. The prune itself runs inside
// the replicated state machine, so every node drops the same entries and
// keeps the same anchor (control.State.AuditAnchor).
type AuditPruner struct {
	Apply     func(ctx context.Context, c control.Command) error
	State     func() *control.State
	IsLeader  func() bool
	NodeID    string
	Retention time.Duration // 0: keep every entry
	Interval  time.Duration // default 1 h
	Logger    *slog.Logger
	// Now is the clock (default time.Now); the command carries its
	// reading, never the state machine's clock.
	Now func() time.Time
}

// Run prunes until ctx ends.
func (p *AuditPruner) Run(ctx context.Context) {
	if p.Retention <= 0 {
		return
	}
	if p.Interval <= 0 {
		p.Interval = time.Hour
	}
	t := time.NewTicker(p.Interval)
	defer t.Stop()
	for {
		p.once(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (p *AuditPruner) once(ctx context.Context) {
	if p.Now == nil {
		p.Now = time.Now
	}
	if p.Logger == nil {
		p.Logger = slog.Default()
	}
	if !p.IsLeader() {
		return
	}
	now := p.Now().UTC()
	n := p.State().PrunableAudit(now.Add(-p.Retention))
	if n == 0 {
		return
	}
	actx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err := p.Apply(actx, control.Command{Kind: control.CmdAuditPrune, By: "node:" + p.NodeID, Time: now, Retention: p.Retention})
	if err != nil {
		p.Logger.Warn("audit retention: prune not applied (retried next interval)", "entries", n, "err", err)
		return
	}
	p.Logger.Info("audit retention: pruned old entries; the anchor keeps the chain verifiable", "entries", n, "retention", p.Retention.String())
}
