package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/zk-migrate/zk-migrate/control"
	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/fence"
	"github.com/zk-migrate/zk-migrate/replicator"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

var _ control.FlipGuard = (*Syncer)(nil)

// FlipReady is the flip's guard (control.FlipGuard): it checks, again and
// again until they hold or ctx ends, that the replicator runs on this node
// and replicates both ways, the lag is under the threshold, no conflict is
// open, both ensembles read now have equal digests on every path, and every
// sequence counter on the new primary (to) is at or above the old one's
// (from); it pads the counters that are below. It returns the last reason
// they did not hold.
func (s *Syncer) FlipReady(ctx context.Context, m *control.Migration, from, to ensemble.Name) error {
	cfg, err := configOf(m)
	if err != nil {
		return err
	}
	servers := map[ensemble.Name]string{ensemble.Source: cfg.Migration.SourceZK, ensemble.Target: cfg.Migration.TargetZK}
	var conns guardConns // from, to; borrowed or dialled when first needed
	defer conns.close()
	var last error
	for {
		last = s.flipProblem(ctx, m, cfg, &conns, [2]string{string(from), string(to)}, [2]string{servers[from], servers[to]})
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			if errors.Is(last, errNoVerdictYet) {
				// Not a finding: the barrier holds again (a timeout), the
				// flip is not aborted.
				return fmt.Errorf("%w: %w", last, context.DeadlineExceeded)
			}
			return last
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// errNoVerdictYet means the guard cannot judge yet: the replicator does
// not run here yet (a new leader's supervisor has not started it), or no
// heartbeat has crossed each way lately, because it has just started (on
// a new leader, after the old one died inside a flip's barrier) or is
// reconnecting (a ZooKeeper server it used died: an election takes
// seconds). At the end of the guard's time it is a timeout, which the
// barrier answers by releasing the holds and holding again, up to three
// times (control.retryHold), before it aborts; not a finding that aborts
// at once. Aborting there failed the flip step in
// TestFlipScenarioUnderFaults twice: the new leader's guard ran 100 ms
// after its replicator started, and the first flip's guard 100 ms after
// the replicator had reconnected from the SIGKILL of A's leader (the last
// heartbeat 4.4 s old); and once the new leader's guard ran before its
// supervisor had started the replicator at all ("not running on the
// leader").
var errNoVerdictYet = errors.New("the guard cannot judge yet")

// youngLag is how long after a replicator starts a lag above the
// threshold is no verdict (errNoVerdictYet) rather than a finding: its
// first full reconcile (every path read on both sides, the backlog of a
// dead leader's replicator decided) runs before its own heartbeats start,
// so what it measures first is that backlog, not the sync's lag.
const youngLag = 10 * time.Second

// lagProblem judges the replicator's last measured lag (A to B, B to A)
// against threshold: nil when under it; errNoVerdictYet when the
// replicator is younger than youngLag or the heartbeat it measured was
// written before it started (an old leader's replicator wrote it: the
// measure is that replicator's death, not this one's lag); else the
// finding. beats are when a heartbeat from A and from B last reached the
// other side (unix nanoseconds, 0: never). The new control leader's guard
// aborted a flip on a lag of 2.35 s over the 2 s threshold just after its
// replicator started (TestFlipScenarioUnderFaults); the barrier now holds
// again instead, and aborts only if the lag is still there after its
// retries (control.retryHold).
func lagProblem(lag [2]time.Duration, threshold time.Duration, started time.Time, beats [2]int64, now time.Time) error {
	if max(lag[0], lag[1]) <= threshold {
		return nil
	}
	msg := fmt.Sprintf("sync lag %v (A to B) / %v (B to A) above the threshold %v", lag[0].Round(time.Millisecond), lag[1].Round(time.Millisecond), threshold)
	if age := now.Sub(started); age < youngLag {
		return fmt.Errorf("%w: %s, measured by a replicator started %v ago (its first full reconcile decides what a dead leader's replicator left; lag is judged from %v on)",
			errNoVerdictYet, msg, age.Round(100*time.Millisecond), youngLag)
	}
	for i, l := range lag {
		if l > threshold && beats[i] != 0 && time.Unix(0, beats[i]).Add(-l).Before(started) {
			return fmt.Errorf("%w: %s, measured on a heartbeat from %s written before this replicator started (by an earlier one)",
				errNoVerdictYet, msg, [2]string{"A", "B"}[i])
		}
	}
	return errors.New(msg)
}

func (s *Syncer) flipProblem(ctx context.Context, m *control.Migration, cfg *control.Config, conns *guardConns, side, connect [2]string) error {
	r := s.run(m.ID)
	if r == nil || !s.IsLeader() {
		// A new leader's supervisor starts it within a tick: no verdict yet.
		return fmt.Errorf("%w: the replicator is not running on the leader (%s)", errNoVerdictYet, s.NodeID)
	}
	if p := r.replicating(true); p != "" {
		return fmt.Errorf("%w: %s", errNoVerdictYet, p)
	}
	threshold := time.Duration(cfg.Sync.LagThresholdMS) * time.Millisecond
	ab, ba := r.cont.Lag()
	if err := lagProblem([2]time.Duration{ab, ba}, threshold, r.started, [2]int64{r.beat[0].Load(), r.beat[1].Load()}, time.Now()); err != nil {
		return err
	}
	if cs := r.cont.Conflicts(); len(cs) > 0 {
		paths := make([]string, 0, len(cs))
		for _, c := range cs {
			paths = append(paths, c.Path)
		}
		return fmt.Errorf("%d open conflict(s) on %s: resolve them first", len(cs), strings.Join(paths, ", "))
	}
	for i := range conns.c {
		if conns.c[i] != nil && conns.c[i].Err() != nil {
			conns.drop(i)
		}
		if conns.c[i] == nil {
			// The replicator's own open session first: no dial (and its
			// timeout) while the proxies hold, on a loaded ensemble.
			if name, err := ensemble.Parse(side[i]); err == nil {
				if c := r.cont.Conn(replicator.Side(name.Index())); c != nil {
					conns.c[i], conns.owned[i] = c, false
					continue
				}
			}
			dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			opts, err := zkOptions(cfg)
			if err != nil {
				cancel()
				return err
			}
			c, err := zkclient.Dial(dctx, strings.Split(connect[i], ","), opts)
			cancel()
			if err != nil {
				return fmt.Errorf("cannot reach ensemble %s to compare digests: %w", side[i], err)
			}
			conns.c[i], conns.owned[i] = c, true
		}
	}
	from, err := ensemble.Parse(side[0])
	if err != nil {
		return err
	}
	copying := func(p string, onFrom *replicator.Node) bool {
		return r.cont.Copying(p, replicator.Side(from.Index()), onFrom)
	}
	for _, root := range cfg.Migration.Paths {
		var trees [2]*replicator.Tree
		for i, c := range conns.c {
			t, err := replicator.ReadTree(ctx, []*zkclient.Conn{c}, root, replicator.ReadOptions{})
			if err != nil {
				return fmt.Errorf("read %s on %s: %w", root, side[i], err)
			}
			trees[i] = t
		}
		if trees[0].Digest() != trees[1].Digest() {
			expected, accepted := withBypassWrites(trees[0], trees[1], copying)
			if expected.Digest() != trees[1].Digest() {
				return fmt.Errorf("digests of %s differ between %s and %s: %v", root, side[0], side[1], replicator.Compare(expected, trees[1], 3))
			}
			s.logger().Info("flip guard: the ensembles differ only by writes that bypassed the proxies on the new primary, which the sync is copying to the old one (SPEC 4d, the flip's guard): accepted",
				"migration", m.ID, "root", root, "from", side[0], "to", side[1], "paths", len(accepted), "first", accepted[0])
		}
		if _, _, err := replicator.PadSequenceCounters(ctx, conns.c[1], trees[0]); err != nil {
			return fmt.Errorf("sequence counters on %s: %w", side[1], err)
		}
		for _, p := range trees[0].Sorted() {
			n := trees[0].Nodes[p]
			if !hasSequential(n.Children) {
				continue
			}
			st, err := conns.c[1].Exists(ctx, p)
			if err != nil {
				return fmt.Errorf("stat %s on %s: %w", p, side[1], err)
			}
			if replicator.CreateCounter(st) < replicator.CreateCounter(n.Stat) {
				return fmt.Errorf("the sequence counter of %s on %s (%d) is below %s's (%d)", p, side[1],
					replicator.CreateCounter(st), side[0], replicator.CreateCounter(n.Stat))
			}
		}
	}
	return nil
}

// withBypassWrites returns from with the state to holds of every path
// found on one side only where copying accepts the difference (the sync
// holds it as a write that bypassed the proxies on to, the secondary, and
// from is still in the state both agreed on:
// replicator.Continuous.Copying), and those paths. Its digest equals to's
// exactly when nothing else differs: those writes are then all that keeps
// the trees apart, and to, the new primary, already holds them (the sync
// copies them to from at once under the new primary, as it would after
// their grace). The children lists of from are kept, changed only by the
// accepted paths' existence, so a child that differs and is not accepted
// still shows. A node on both sides whose data or ACL differ is never
// accepted: the proxies translate the versions of the znodes their
// clients were shown by the two ensembles' stats read at the flip (SPEC
// 4.10), so a setData not yet copied to from would be shown at the
// version from still has, and a conditional write made with it would
// succeed over it; such a path waits for its copy.
func withBypassWrites(from, to *replicator.Tree, copying func(p string, onFrom *replicator.Node) bool) (*replicator.Tree, []string) {
	var accepted []string
	for p := range to.Nodes {
		if _, ok := from.Nodes[p]; !ok && copying(p, nil) {
			accepted = append(accepted, p)
		}
	}
	for p, f := range from.Nodes {
		if _, ok := to.Nodes[p]; !ok && copying(p, f) {
			accepted = append(accepted, p)
		}
	}
	if len(accepted) == 0 {
		return from, nil
	}
	slices.Sort(accepted)
	out := &replicator.Tree{Root: from.Root, Nodes: make(map[string]*replicator.Node, len(from.Nodes))}
	for p, n := range from.Nodes {
		out.Nodes[p] = n
	}
	for _, p := range accepted {
		if n, ok := to.Nodes[p]; ok {
			c := *n
			c.Children = nil
			if f, ok := from.Nodes[p]; ok {
				c.Children = f.Children
			}
			out.Nodes[p] = &c
		} else {
			delete(out.Nodes, p)
		}
	}
	// The accepted paths' existence in their parents' children lists.
	for _, p := range accepted {
		if p == from.Root {
			continue
		}
		parent, ok := out.Nodes[path.Dir(p)]
		if !ok {
			continue
		}
		name := path.Base(p)
		_, exists := out.Nodes[p]
		i, listed := slices.BinarySearch(parent.Children, name)
		if exists == listed {
			continue
		}
		c := *parent
		c.Children = slices.Clone(parent.Children)
		if exists {
			c.Children = slices.Insert(c.Children, i, name)
		} else {
			c.Children = slices.Delete(c.Children, i, i+1)
		}
		out.Nodes[c.Path] = &c
	}
	return out, accepted
}

func (s *Syncer) logger() *slog.Logger {
	if s.Logger == nil {
		return slog.Default()
	}
	return s.Logger
}

// guardConns are the guard's sessions on the old and the new primary:
// the replicator's own (borrowed, never closed here) or dialled (owned).
type guardConns struct {
	c     [2]*zkclient.Conn
	owned [2]bool
}

// drop forgets session i, closing it if the guard dialled it.
func (g *guardConns) drop(i int) {
	if g.owned[i] {
		_ = g.c[i].Close()
	}
	g.c[i], g.owned[i] = nil, false
}

func (g *guardConns) close() {
	for i := range g.c {
		if g.c[i] != nil {
			g.drop(i)
		}
	}
}

// hasSequential reports whether a child name ends in ZooKeeper's ten-digit
// sequence suffix: its parent's counter names the next one.
func hasSequential(children []string) bool {
	for _, k := range children {
		if len(k) < 10 {
			continue
		}
		seq := true
		for _, c := range k[len(k)-10:] {
			seq = seq && c >= '0' && c <= '9'
		}
		if seq {
			return true
		}
	}
	return false
}

var _ control.Fencer = (*Syncer)(nil)

// Fence raises the fence znode (fence.Path) of both of m's ensembles to
// epoch and primary (control.Fencer): from then on a proxy holding an
// older epoch can commit no write on either ensemble. Idempotent: a
// fence at epoch or later is left alone, so a new leader repeating it
// fences none of the proxies that learned it. The old primary's is
// raised first, on the condition of the held proxies' markers: if one
// changed, nothing is raised and its proxy is returned in lapsed.
func (s *Syncer) Fence(ctx context.Context, m *control.Migration, epoch int64, primary ensemble.Name, markers map[string]fence.Marker) (lapsed []string, err error) {
	cfg, err := configOf(m)
	if err != nil {
		return nil, err
	}
	opts, err := zkOptions(cfg)
	if err != nil {
		return nil, err
	}
	proxies := make([]string, 0, len(markers))
	for p := range markers {
		proxies = append(proxies, p)
	}
	slices.Sort(proxies)
	held := make([]fence.Marker, len(proxies))
	for i, p := range proxies {
		held[i] = markers[p]
	}
	r := s.run(m.ID)
	// The old primary first: it is the one stale proxies write to.
	for _, side := range []struct {
		name    ensemble.Name
		connect string
	}{{primary.Other(), serversOf(cfg, primary.Other())}, {primary, serversOf(cfg, primary)}} {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		// The replicator's open session first: no dial while clients wait.
		var c *zkclient.Conn
		if r != nil {
			c = r.cont.Conn(replicator.Side(side.name.Index()))
		}
		owned := c == nil
		if owned {
			if c, err = zkclient.Dial(dctx, strings.Split(side.connect, ","), opts); err != nil {
				cancel()
				return nil, fmt.Errorf("fence %s: %w", side.name, err)
			}
		}
		var gone []int
		if side.name == primary {
			_, err = fence.Raise(dctx, c, fence.Path, epoch, primary)
		} else {
			_, gone, err = fence.RaiseIf(dctx, c, fence.Path, epoch, primary, held)
		}
		if owned {
			_ = c.Close()
		}
		cancel()
		if err != nil {
			return nil, fmt.Errorf("fence %s: %w", side.name, err)
		}
		if len(gone) > 0 {
			for _, i := range gone {
				lapsed = append(lapsed, proxies[i])
			}
			return lapsed, nil // nothing raised: the caller holds them again
		}
		// The proxies hold (the flip is committed, or a reverse flip
		// holds them): from their swap on they write to primary, and a
		// stale proxy reading this fence moves there by itself, so the
		// replicator takes it as their primary now and keeps it
		// (followPrimary) whatever the state it reads says until the
		// state records it. With the old one it would copy the old
		// primary's state (the mirror's late writes) over the clients'
		// new writes.
		if err := s.fencedPrimary(m, epoch, primary); err != nil {
			return nil, err
		}
	}
	return nil, nil
}

func serversOf(cfg *control.Config, n ensemble.Name) string {
	if n == ensemble.Target {
		return cfg.Migration.TargetZK
	}
	return cfg.Migration.SourceZK
}
