package control

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/zk-migrate/zk-migrate/ensemble"
)

// Retirer is a ProxyFleet whose proxies can retire the old ensemble
// (phase 6): stop mirroring to it and close their shadow sessions there,
// so that no session is left on A. membership.Fleet is one.
type Retirer interface {
	// Retire asks each named proxy to retire old and returns, for each
	// one that did not before ctx ended, why (its answer, or that it did
	// not answer). Asking a proxy that already retired old is answered
	// as a success.
	Retire(ctx context.Context, migration string, old ensemble.Name, proxies []string) (failed map[string]string, err error)
}

// ErrNotRetired is phase 6 failing because live proxies did not retire
// ensemble A: each still holds sessions there (or may).
var ErrNotRetired = errors.New("control: proxies did not retire ensemble A")

// RetireTimeout bounds phase 6's wait for the proxies to close their
// shadow sessions on A (each closes at most a few at a time per session
// timeout; most answer within a second).
const RetireTimeout = 30 * time.Second

// retireA is phase 6's request to every live proxy, between its Run (A's
// processes and the sync stopped) and its Verify (no session left on A):
// the proxies retire A. It first records retire-a, so a rollback is
// refused from then on: a proxy that retired A cannot serve from it again.
// A proxy that does not retire A is named and fails the step.
func (e *Executor) retireA(ctx context.Context, m *Migration) error {
	rf, ok := e.Fleet.(Retirer)
	if !ok {
		return nil // no proxies to ask (actions bring their own automation)
	}
	live, err := e.Fleet.Live(ctx)
	if err != nil {
		return fmt.Errorf("retire A: list proxies: %w", err)
	}
	if len(live) == 0 {
		return nil
	}
	if !m.ARetired {
		c := e.cmd(CmdRetireA, m)
		c.Proxies, c.Detail = live, "proxies="+strings.Join(live, ",")
		if err := e.P.Apply(ctx, c); err != nil {
			return err
		}
	}
	rctx, cancel := context.WithTimeout(ctx, RetireTimeout)
	defer cancel()
	failed, err := rf.Retire(rctx, m.ID, ensemble.Source, live)
	if err != nil {
		return fmt.Errorf("retire A: %w", err)
	}
	if len(failed) == 0 {
		e.Logger.Info("phase 6: every proxy retired ensemble A", "migration", m.ID, "proxies", live)
		return nil
	}
	names := make([]string, 0, len(failed))
	for p := range failed {
		names = append(names, p)
	}
	sort.Strings(names)
	why := make([]string, 0, len(names))
	for _, p := range names {
		why = append(why, p+" ("+failed[p]+")")
	}
	return fmt.Errorf("%w: %s; restart each named proxy with its --state-dir, or remove it from the fleet (stop it: it leaves the gossip pool), then `zk-migrate retry`",
		ErrNotRetired, strings.Join(why, "; "))
}
