package server

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/zk-migrate/zk-migrate/control"
	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/fence"
	"github.com/zk-migrate/zk-migrate/replicator"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

var _ control.Announcer = (*Syncer)(nil)

// Announce writes the announcement of m's barrier at epoch towards
// primary under the old primary's fence (fence.Announce, SPEC.md 4.10 "A
// proxy the barrier did not hold"), before the first proxy is asked to
// hold. The raise deletes it (fence.RaiseIf); Withdraw when the holds are
// released without a flip.
func (s *Syncer) Announce(ctx context.Context, m *control.Migration, epoch int64, primary ensemble.Name) error {
	return s.onEnsemble(ctx, m, primary.Other(), func(ctx context.Context, c *zkclient.Conn) error {
		_, err := fence.Announce(ctx, c, fence.Path, epoch, primary)
		return err
	})
}

// Withdraw deletes the announcement of m's barrier at epoch.
func (s *Syncer) Withdraw(ctx context.Context, m *control.Migration, epoch int64, primary ensemble.Name) error {
	return s.onEnsemble(ctx, m, primary.Other(), func(ctx context.Context, c *zkclient.Conn) error {
		return fence.Withdraw(ctx, c, fence.Path, epoch)
	})
}

// onEnsemble runs do on a session to ensemble n of m: the replicator's
// open one when it runs (no dial while clients wait), else one dialled
// for it. 10 s at most.
func (s *Syncer) onEnsemble(ctx context.Context, m *control.Migration, n ensemble.Name, do func(context.Context, *zkclient.Conn) error) error {
	cfg, err := configOf(m)
	if err != nil {
		return err
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var c *zkclient.Conn
	if r := s.run(m.ID); r != nil {
		c = r.cont.Conn(replicator.Side(n.Index()))
	}
	if c == nil {
		opts, err := zkOptions(cfg)
		if err != nil {
			return err
		}
		if c, err = zkclient.Dial(dctx, strings.Split(serversOf(cfg, n), ","), opts); err != nil {
			return fmt.Errorf("%s: %w", n, err)
		}
		defer func() { _ = c.Close() }()
	}
	if err := do(dctx, c); err != nil {
		return fmt.Errorf("%s: %w", n, err)
	}
	return nil
}
