package replicator

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// Side names an ensemble: A (the source of the migration) or B.
type Side int

// The two sides.
const (
	SideA Side = 0
	SideB Side = 1
)

func (s Side) String() string { return [...]string{"A", "B"}[s] }

func (s Side) other() Side { return 1 - s }

// Conflict strategies.
const (
	LastWriteWins = "last-write-wins"
	Manual        = "manual"
)

// HeartbeatRoot holds the replicator's heartbeat nodes, synced like the
// configured paths: heartbeat-a is written on A, heartbeat-b on B.
const HeartbeatRoot = "/zk-migrate"

// ContinuousConfig configures continuous bidirectional sync.
type ContinuousConfig struct {
	// Dial opens a session on a side. The replicator resumes its writer
	// sessions (id and password) after a connection loss so the ephemerals
	// it mirrors survive.
	Dial func(ctx context.Context, side Side, resume *zkclient.Conn) (*zkclient.Conn, error)
	// Roots are the subtrees kept in sync.
	Roots []string
	// Strategy for a znode changed on both sides since its last sync:
	// LastWriteWins (the later mtime wins; a deletion never beats an
	// update) or Manual (both kept, the path is marked until Resolve).
	// With Primary set the primary wins a path both sides changed since
	// they agreed, with no conflict (see decideMirroredLocked).
	Strategy string
	// Audit receives one JSON line per event (Event's JSON).
	Audit io.Writer
	// OnEvent, if set, receives every conflict, resolution and alert
	// (the control plane records them in its replicated audit trail). It
	// is called where the event happens, under the replicator's lock: it
	// must not call back into the Continuous.
	OnEvent func(Event)
	// Heartbeat is how often each side's heartbeat is written (100 ms;
	// negative disables).
	Heartbeat time.Duration
	// LagThreshold raises an alert when the lag stays above it for
	// LagAlertAfter (defaults 50 ms, 10 s).
	LagThreshold, LagAlertAfter time.Duration
	// OnAlert is called for every alert (optional).
	OnAlert func(Alert)
	// OnLag is called with every lag measurement (optional; must not block).
	OnLag func(from Side, lag time.Duration)
	// ReconcileEvery runs a full comparison of both trees (default 30 s):
	// it catches what no watch reports (ACL changes).
	ReconcileEvery time.Duration
	// Metrics, if set, records lag and activity.
	Metrics *Metrics
	// Logger (default slog.Default()).
	Logger *slog.Logger
	// Initial, if set, is run once before continuous sync starts (the
	// snapshot copy A to B).
	InitialSync bool
	// InheritGrace applies to a start without the initial copy (a new
	// control leader resuming the sync): an ephemeral node found on both
	// sides may be a copy a previous replicator's session owns, which
	// vanishes when that session expires. For this long after the start
	// such a node gone from one side is not deleted from the other; after
	// it, the side that still has it decides (default 15 s, above the
	// replicator's 10 s session timeout).
	InheritGrace time.Duration
	// MaxBatch bounds the paths handled in one round (default 2000).
	MaxBatch int
	// Primary, when set, is the ensemble two-ensemble proxies use as
	// their primary and mirror to the other one (ensemble.Source for A,
	// ensemble.Target for B). The replicator then leaves to the proxies'
	// mirror what it does: see mirrored.go and SPEC 4c. Empty: no proxy
	// dual-writes, both sides are decided alike.
	Primary ensemble.Name
	// MirrorGrace is how long a difference the proxies' mirror may still
	// be converging (with Primary set) must persist, the primary
	// unchanged, before the replicator acts on it (default 5 s: above the
	// proxies' longest mirror pass, a shadow session's re-attach to
	// another server included).
	MirrorGrace time.Duration
	// Checkpoint, for a start without the initial copy, is the last moment a
	// former replicator found both sides equal (see Checkpoint): with it, a
	// znode deleted on one side while no sync ran is deleted on the other,
	// not copied back. Nil: every path found on one side only is copied.
	Checkpoint *Checkpoint
	// OnCheckpoint, if set, receives every checkpoint taken: after each full
	// reconcile that verified both sides equal. It is called outside the
	// replicator's lock and must not block (the control plane records it in
	// its replicated state for the next leader).
	OnCheckpoint func(Checkpoint)
	// OneShotWatches watches with one-shot watch trees (a data and a child
	// watch on every znode, re-armed as they fire) instead of persistent
	// recursive watches. It is chosen by itself for a side whose servers
	// answer addWatch UNIMPLEMENTED (ZooKeeper 3.4 and 3.5).
	OneShotWatches bool
}

// Alert is a condition an operator must hear about.
type Alert struct {
	Time    time.Time `json:"time"`
	Kind    string    `json:"kind"` // "sync_lag", "conflict", "sync_failure", "acl_unreadable"
	Message string    `json:"message"`
}

// Conflict is a znode changed on both sides since its last sync.
type Conflict struct {
	Time     time.Time `json:"time"`
	Path     string    `json:"path"`
	Strategy string    `json:"strategy"`
	Winner   string    `json:"winner"` // "A", "B", or "" while unresolved (manual)
	ValueA   []byte    `json:"value_a"`
	ValueB   []byte    `json:"value_b"`
	ExistsA  bool      `json:"exists_a"`
	ExistsB  bool      `json:"exists_b"`
}

// version identifies a side's state of a path: its data by mzxid, its ACL
// by aversion (setACL fires no watch, but the Stat read with every data
// change carries the aversion, so an ACL changed since the last agreement
// is seen with the next data change, or at the next full reconcile).
type version struct {
	exists   bool
	mzxid    int64
	aversion int32
}

func statVersion(st *jute.Stat) version {
	return version{exists: true, mzxid: st.Mzxid, aversion: st.Aversion}
}

// Continuous keeps two ensembles' subtrees equal in both directions.
type Continuous struct {
	cfg ContinuousConfig
	log *slog.Logger

	mu          sync.Mutex
	synced      map[string][2]version // last state both sides agreed on
	conflicts   map[string]Conflict
	forced      map[string]Side // resolved conflicts: copy from this side next
	digestEqual map[string]bool // per root, from the last full reconcile
	// unreadable are the znodes whose ACL ZooKeeper hides from the
	// replicator, on either side: never copied (blocked), never equal.
	unreadable map[sidePath]UnreadableACL
	kick       chan string // paths to handle now (resolved conflicts)
	auditMu    sync.Mutex
	lastLag    [2]time.Duration
	lagSince   time.Time
	rounds     int64
	// begun and inherited: when a start without the initial copy began,
	// and the ephemeral nodes it found on both sides (see InheritGrace).
	begun     time.Time
	inherited map[string]bool
	// primary is the proxies' primary side (nil: no proxy dual-writes);
	// deferred are the differences left to their mirror for now.
	primary  *Side
	deferred map[string]deferral
	// checkpoint is the last moment both sides were verified equal (given
	// at start or taken since): see inferLocked.
	checkpoint *Checkpoint
	// marked caches, per side, the sessions found marked as a proxy's
	// (sessions.go); leftToProxy the secondary's proxied ephemerals left
	// to their proxy, by path, with their owner (logged once each). Both
	// are cleared at every full reconcile.
	marked      [2]map[int64]bool
	leftToProxy map[string]int64

	conns [2]*zkclient.Conn // writers (and readers); replaced on reconnect
	// watchers and oneShot are the current session's watcher connections
	// and whether a side uses one-shot watch trees.
	watchers [2]*zkclient.Conn
	oneShot  [2]bool
	beats    [2]*zkclient.Call // heartbeat writes in flight
}

// NewContinuous checks cfg and returns a replicator ready to Run.
func NewContinuous(cfg ContinuousConfig) (*Continuous, error) {
	if cfg.Dial == nil {
		return nil, errors.New("replicator: ContinuousConfig.Dial is required")
	}
	if len(cfg.Roots) == 0 {
		return nil, errors.New("replicator: no paths to sync (give --paths /mesos)")
	}
	switch cfg.Strategy {
	case "":
		cfg.Strategy = LastWriteWins
	case LastWriteWins, Manual:
	default:
		return nil, fmt.Errorf("replicator: conflict strategy %q: want %q or %q", cfg.Strategy, LastWriteWins, Manual)
	}
	if cfg.Heartbeat == 0 {
		cfg.Heartbeat = 100 * time.Millisecond
	}
	if cfg.LagThreshold == 0 {
		cfg.LagThreshold = 50 * time.Millisecond
	}
	if cfg.LagAlertAfter == 0 {
		cfg.LagAlertAfter = 10 * time.Second
	}
	if cfg.ReconcileEvery == 0 {
		cfg.ReconcileEvery = 30 * time.Second
	}
	if cfg.InheritGrace == 0 {
		cfg.InheritGrace = 15 * time.Second
	}
	if cfg.MaxBatch == 0 {
		cfg.MaxBatch = 2000
	}
	if cfg.MirrorGrace == 0 {
		cfg.MirrorGrace = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Heartbeat > 0 {
		cfg.Roots = append(append([]string(nil), cfg.Roots...), HeartbeatRoot)
	}
	c := &Continuous{cfg: cfg, log: cfg.Logger, synced: map[string][2]version{}, conflicts: map[string]Conflict{},
		forced: map[string]Side{}, kick: make(chan string, 1024), digestEqual: map[string]bool{},
		unreadable: map[sidePath]UnreadableACL{}, inherited: map[string]bool{},
		deferred: map[string]deferral{}, marked: [2]map[int64]bool{{}, {}}, leftToProxy: map[string]int64{}}
	if err := c.SetPrimary(cfg.Primary); err != nil {
		return nil, err
	}
	if cfg.Checkpoint != nil && !cfg.InitialSync {
		cp := *cfg.Checkpoint
		c.checkpoint = &cp
	}
	return c, nil
}

type sidePath struct {
	side Side
	path string
}

// Unreadable lists the znodes whose ACL ZooKeeper hides from the replicator
// (RedactedACL), as last seen, in path order: continuous sync does not copy
// them (nor create what lies below them), and their roots never count as
// equal, until the replicator can read them.
func (c *Continuous) Unreadable() []UnreadableACL {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]UnreadableACL, 0, len(c.unreadable))
	for _, u := range c.unreadable {
		out = append(out, u)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Path != out[j].Path {
			return out[i].Path < out[j].Path
		}
		return out[i].Side < out[j].Side
	})
	return out
}

// noteUnreadable records znodes with hidden ACLs, replacing the previous
// set when replace is true (a full reconcile read every path), and raises
// an acl_unreadable alert for those not known before. Their roots no
// longer count as equal (until a full reconcile proves them so).
func (c *Continuous) noteUnreadable(nodes []UnreadableACL, replace bool) {
	var fresh []UnreadableACL
	c.mu.Lock()
	old := c.unreadable
	if replace {
		c.unreadable = make(map[sidePath]UnreadableACL, len(nodes))
	}
	for _, u := range nodes {
		k := sidePath{u.Side, u.Path}
		if _, known := old[k]; !known {
			fresh = append(fresh, u)
		}
		c.unreadable[k] = u
		old[k] = u // a repeat within nodes is not fresh twice
	}
	var unequal []string
	for _, root := range c.cfg.Roots {
		for _, u := range fresh {
			if eq, ok := c.digestEqual[root]; ok && eq && (u.Path == root || strings.HasPrefix(u.Path, root+"/")) {
				c.digestEqual[root] = false
				unequal = append(unequal, root)
				break
			}
		}
	}
	n := len(c.unreadable)
	c.mu.Unlock()
	if c.cfg.Metrics != nil {
		for _, root := range unequal {
			c.cfg.Metrics.inSync.WithLabelValues(root).Set(0)
		}
	}
	if c.cfg.Metrics != nil {
		c.cfg.Metrics.unreadable.Set(float64(n))
	}
	if len(fresh) > 0 {
		c.alert(Alert{Kind: "acl_unreadable", Message: "not copying: " + DescribeUnreadable(fresh, 20)})
	}
}

// blockedLocked reports whether p's ACL is hidden on either side.
func (c *Continuous) blockedLocked(p string) bool {
	_, a := c.unreadable[sidePath{SideA, p}]
	_, b := c.unreadable[sidePath{SideB, p}]
	return a || b
}

// Conflicts lists the unresolved conflicts (Manual strategy).
func (c *Continuous) Conflicts() []Conflict {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]Conflict, 0, len(c.conflicts))
	for _, k := range c.conflicts {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out
}

// Resolve ends a manual conflict: the next round copies keep's value to the
// other side.
func (c *Continuous) Resolve(p string, keep Side) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.conflicts[p]; !ok {
		return fmt.Errorf("replicator: no conflict on %s", p)
	}
	delete(c.conflicts, p)
	c.forced[p] = keep
	c.emit(Event{Time: time.Now(), Kind: "conflict_resolved", Path: p, Kept: keep.String()})
	select {
	case c.kick <- p:
	default: // the next reconcile handles it
	}
	return nil
}

// Lag returns the last measured lag of changes made on A (to reach B) and on
// B (to reach A).
func (c *Continuous) Lag() (aToB, bToA time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastLag[SideA], c.lastLag[SideB]
}

// Conn is the replicator's open session on side, or nil while it has none
// (starting, reconnecting). Others may read through it (the flip's guard
// compares digests on it rather than dialing while the proxies hold):
// never close it.
func (c *Continuous) Conn(side Side) *zkclient.Conn {
	c.mu.Lock()
	defer c.mu.Unlock()
	if conn := c.conns[side]; conn != nil && conn.Err() == nil {
		return conn
	}
	return nil
}

// Rounds is the number of rounds done (for tests and status).
func (c *Continuous) Rounds() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rounds
}

type event struct {
	side Side
	path string
}

// Run syncs until ctx ends. After a session loss it reconnects, re-arms its
// watches and reconciles every path, so nothing that changed meanwhile is
// missed. It returns ctx's error.
func (c *Continuous) Run(ctx context.Context) error {
	if !c.cfg.InitialSync {
		c.mu.Lock()
		c.begun = time.Now()
		c.mu.Unlock()
	}
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := c.runSession(ctx)
		if ctx.Err() != nil {
			break
		}
		c.alert(Alert{Kind: "sync_failure", Message: fmt.Sprintf("sync interrupted, reconnecting: %v", err)})
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
	for i, conn := range c.conns {
		if conn != nil {
			_ = conn.Close()
			c.mu.Lock()
			c.conns[i] = nil
			c.mu.Unlock()
		}
	}
	return ctx.Err()
}

func (c *Continuous) runSession(ctx context.Context) error {
	var watchers [2]*zkclient.Conn
	var wg sync.WaitGroup // the event pumps, which end when their watcher closes
	sctx, cancel := context.WithCancel(ctx)
	defer func() {
		cancel()
		for _, w := range watchers {
			if w != nil {
				w.Abandon()
			}
		}
		wg.Wait()
	}()
	c.beats = [2]*zkclient.Call{}
	for _, side := range []Side{SideA, SideB} {
		w, err := c.cfg.Dial(ctx, side, c.conns[side])
		if err != nil && c.conns[side] != nil && errors.Is(err, zkclient.ErrExpired) {
			c.writerExpired(side)
			w, err = c.cfg.Dial(ctx, side, nil)
		}
		if err != nil {
			return fmt.Errorf("writer on %s: %w", side, err)
		}
		if c.conns[side] != nil && c.conns[side] != w {
			c.conns[side].Abandon()
		}
		c.mu.Lock()
		c.conns[side] = w
		c.mu.Unlock()
		if watchers[side], err = c.cfg.Dial(ctx, side, nil); err != nil {
			return fmt.Errorf("watcher on %s: %w", side, err)
		}
	}
	// Watches first, so no change between the reconcile's reads and the
	// first event is missed.
	if c.cfg.Heartbeat > 0 {
		for _, side := range []Side{SideA, SideB} {
			if _, err := c.conns[side].Create(ctx, HeartbeatRoot, nil, zkclient.OpenACL, 0); err != nil && jute.CodeOf(err) != jute.CodeNodeExists {
				return fmt.Errorf("create %s on %s: %w", HeartbeatRoot, side, err)
			}
		}
	}
	for _, side := range []Side{SideA, SideB} {
		if err := c.ensureSessionMarkers(ctx, side); err != nil {
			return err
		}
	}
	var oneShot [2]bool
	for _, side := range []Side{SideA, SideB} {
		oneShot[side] = c.cfg.OneShotWatches
		for _, root := range c.cfg.Roots {
			if oneShot[side] {
				break
			}
			err := watchers[side].AddWatch(ctx, root, true)
			if jute.CodeOf(err) == jute.CodeUnimplemented {
				c.log.Info("ensemble has no persistent watches (before ZooKeeper 3.6): using one-shot watch trees", "side", side)
				oneShot[side] = true
				break
			}
			if err != nil {
				return fmt.Errorf("addWatch %s on %s: %w", root, side, err)
			}
		}
	}
	c.watchers, c.oneShot = watchers, oneShot
	events := make(chan event, 65536)
	for _, side := range []Side{SideA, SideB} {
		wg.Add(1)
		go func(side Side, w *zkclient.Conn) {
			defer wg.Done()
			for ev := range w.Events() {
				if ev.Path == "" {
					continue
				}
				paths := []string{ev.Path}
				if oneShot[side] {
					// Re-arm before the path is decided: a change after
					// this fires again, so none falls in between. New
					// children are armed and decided too.
					kids, err := armOneShot(sctx, w, paths)
					if err != nil {
						return // the watcher failed: runSession sees it
					}
					if ev.Type == jute.EventNodeChildrenChanged {
						paths = append(paths, kids...)
						if _, err := armOneShot(sctx, w, kids); err != nil {
							return
						}
					}
				}
				for _, p := range paths {
					if isSessionMarker(p) {
						continue // the proxies' session markers: never synced
					}
					select {
					case events <- event{side, p}:
					case <-sctx.Done():
						return
					}
				}
			}
		}(side, watchers[side])
	}
	if c.cfg.InitialSync {
		// Beside dual-writing proxies, a client's ephemeral on B belongs to
		// its proxy's shadow session: the copy must not take it over.
		c.mu.Lock()
		dualWrite := c.primary != nil
		c.mu.Unlock()
		res, err := Sync(ctx, Endpoints{Source: []*zkclient.Conn{c.conns[SideA]}, Target: []*zkclient.Conn{c.conns[SideB]}},
			c.cfg.Roots, Options{SkipUnreadableACLs: true, KeepForeignEphemerals: dualWrite})
		if err != nil {
			return fmt.Errorf("initial copy: %w", err)
		}
		c.noteUnreadable(res.Unreadable, false)
		c.cfg.InitialSync = false
		if err := c.adoptAll(ctx); err != nil {
			return err
		}
	}
	if err := c.validateCheckpoint(ctx); err != nil {
		return err
	}
	if err := c.reconcileAll(ctx, events); err != nil {
		return err
	}
	hb := time.NewTicker(max(c.cfg.Heartbeat, time.Millisecond))
	if c.cfg.Heartbeat < 0 {
		hb.Stop()
	}
	defer hb.Stop()
	rec := time.NewTicker(c.cfg.ReconcileEvery)
	defer rec.Stop()
	due := time.NewTicker(max(c.cfg.MirrorGrace/4, 10*time.Millisecond))
	defer due.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-watchers[SideA].Done():
			return fmt.Errorf("watcher on A: %w", watchers[SideA].Err())
		case <-watchers[SideB].Done():
			return fmt.Errorf("watcher on B: %w", watchers[SideB].Err())
		case <-c.conns[SideA].Done():
			return fmt.Errorf("writer on A: %w", c.conns[SideA].Err())
		case <-c.conns[SideB].Done():
			return fmt.Errorf("writer on B: %w", c.conns[SideB].Err())
		case <-hb.C:
			if err := c.beat(ctx); err != nil {
				return err
			}
		case <-rec.C:
			if err := c.reconcileAll(ctx, events); err != nil {
				return err
			}
		case <-due.C:
			if paths := c.dueDeferred(time.Now()); len(paths) > 0 {
				if err := c.round(ctx, paths); err != nil {
					return err
				}
			}
		case p := <-c.kick:
			if err := c.round(ctx, []string{p}); err != nil {
				return err
			}
		case ev := <-events:
			batch := map[string]struct{}{ev.path: {}}
		drain:
			for len(batch) < c.cfg.MaxBatch {
				select {
				case ev := <-events:
					batch[ev.path] = struct{}{}
				default:
					break drain
				}
			}
			paths := make([]string, 0, len(batch))
			for p := range batch {
				paths = append(paths, p)
			}
			if err := c.round(ctx, paths); err != nil {
				return err
			}
		}
	}
}

// writerExpired drops side's writer session, which the ensemble expired
// (unreachable past its timeout): resuming it can never succeed again, so
// before, the sync stopped for good, retrying it every 5 s. The ephemeral
// copies it held on that side went with it. What both sides agreed on is
// forgotten, so the next reconcile decides every path as a replicator
// resuming from the last checkpoint does (whose writer sessions name the
// expired one): a copy gone with the session is made again, never taken
// for a deletion to copy to the other side, where the original lives.
func (c *Continuous) writerExpired(side Side) {
	c.log.Warn("the replicator's writer session expired: opening a new one; every path is decided again from the last checkpoint",
		"side", side, "session", fmt.Sprintf("0x%x", c.conns[side].SessionID()))
	c.conns[side].Abandon()
	c.mu.Lock()
	c.conns[side] = nil
	c.synced = map[string][2]version{}
	c.mu.Unlock()
}

// beat writes each side's heartbeat: the time it was written, so its copy
// on the other side tells the lag. It does not wait: the previous beat's
// result is checked, so the loop never stalls on it.
func (c *Continuous) beat(ctx context.Context) error {
	for _, side := range []Side{SideA, SideB} {
		if prev := c.beats[side]; prev != nil {
			select {
			case <-prev.Done:
				switch jute.CodeOf(prev.Err) {
				case jute.CodeOK:
				case jute.CodeNoNode:
					if _, err := c.conns[side].Create(ctx, c.heartbeatPath(side), nil, zkclient.OpenACL, 0); err != nil && jute.CodeOf(err) != jute.CodeNodeExists {
						return fmt.Errorf("heartbeat on %s: %w", side, err)
					}
				default:
					return fmt.Errorf("heartbeat on %s: %w", side, prev.Err)
				}
			default:
				continue // still in flight: skip this beat
			}
		}
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], uint64(time.Now().UnixNano()))
		c.beats[side] = c.conns[side].Go(jute.OpSetData, &jute.SetDataRequest{Path: c.heartbeatPath(side), Data: b[:], Version: -1}, &jute.SetDataResponse{})
	}
	return nil
}

func (c *Continuous) heartbeatPath(side Side) string {
	return HeartbeatRoot + "/heartbeat-" + strings.ToLower(side.String())
}

// reconcileAll decides every path present on either side, then reads both
// trees again and records whether their digests are equal.
//
// The loop handles no watch event while it runs (seconds on a loaded
// machine with many znodes), so the changes made meanwhile wait; before
// the verification read it decides those queued in pending, as the loop
// would: otherwise a writer changing the primary more often than a
// reconcile takes (the demo's direct writer, once a second) left the
// newest change uncopied at every verification read, and phase 1's
// check of equal digests waited for minutes.
func (c *Continuous) reconcileAll(ctx context.Context, pending chan event) error {
	c.mu.Lock()
	c.marked = [2]map[int64]bool{{}, {}}
	clear(c.leftToProxy)
	c.mu.Unlock()
	seen := map[string]struct{}{}
	trees, err := c.readTrees(ctx, seen)
	if err != nil {
		return err
	}
	c.noteUnreadable(unreadableInAll(trees), true)
	// One-shot watch trees are armed on every znode (and on the roots, for
	// their creation) at each full reconcile: nodes created by the copy or
	// while a watch was firing get theirs. Arming twice is harmless.
	for _, side := range []Side{SideA, SideB} {
		if !c.oneShot[side] {
			continue
		}
		paths := append([]string(nil), c.cfg.Roots...)
		for _, t := range trees[side] {
			paths = append(paths, t.Sorted()...)
		}
		if _, err := armOneShot(ctx, c.watchers[side], paths); err != nil {
			return fmt.Errorf("watch tree on %s: %w", side, err)
		}
	}
	c.mu.Lock()
	for p := range c.synced {
		seen[p] = struct{}{}
	}
	c.mu.Unlock()
	paths := make([]string, 0, len(seen))
	for p := range seen {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for i := 0; i < len(paths); i += c.cfg.MaxBatch {
		if err := c.round(ctx, paths[i:min(i+c.cfg.MaxBatch, len(paths))]); err != nil {
			return err
		}
	}
	// ACLs fire no watch: compare them here.
	if err := c.reconcileACLs(ctx, paths); err != nil {
		return err
	}
	if err := c.roundPending(ctx, pending); err != nil {
		return err
	}
	zxids, err := c.currentZxids(ctx)
	if err != nil {
		return err
	}
	if trees, err = c.readTrees(ctx, nil); err != nil {
		return err
	}
	c.noteUnreadable(unreadableInAll(trees), false)
	c.mu.Lock()
	for i, root := range c.cfg.Roots {
		hidden := len(trees[SideA][i].Unreadable) + len(trees[SideB][i].Unreadable)
		eq := trees[SideA][i].Digest() == trees[SideB][i].Digest() && hidden == 0
		if hidden > 0 {
			c.log.Warn("cannot verify: ZooKeeper hides digest ACLs from the replicator", "root", root, "znodes", hidden)
		} else if !eq {
			c.log.Warn("digests differ after reconcile", "root", root, "first_differences", fmt.Sprint(Compare(trees[SideA][i], trees[SideB][i], 5)))
		}
		c.digestEqual[root] = eq
		if c.cfg.Metrics != nil {
			v := 0.0
			if eq {
				v = 1
			}
			c.cfg.Metrics.inSync.WithLabelValues(root).Set(v)
		}
	}
	cp, ok := c.checkpointLocked(zxids, c.conns)
	c.mu.Unlock()
	if ok && c.cfg.OnCheckpoint != nil {
		c.cfg.OnCheckpoint(cp)
	}
	return nil
}

// roundPending decides, in rounds of MaxBatch, the paths of the watch
// events queued in pending now (without waiting for more).
func (c *Continuous) roundPending(ctx context.Context, pending chan event) error {
	batch := map[string]struct{}{}
	for len(batch) < 16*c.cfg.MaxBatch {
		select {
		case ev := <-pending:
			batch[ev.path] = struct{}{}
			continue
		default:
		}
		break
	}
	paths := make([]string, 0, len(batch))
	for p := range batch {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for i := 0; i < len(paths); i += c.cfg.MaxBatch {
		if err := c.round(ctx, paths[i:min(i+c.cfg.MaxBatch, len(paths))]); err != nil {
			return err
		}
	}
	return nil
}

// unreadableInAll lists the hidden ACLs of every tree read.
func unreadableInAll(trees [2][]*Tree) []UnreadableACL {
	var out []UnreadableACL
	for _, side := range []Side{SideA, SideB} {
		for _, t := range trees[side] {
			out = append(out, unreadableIn(t, side)...)
		}
	}
	return out
}

// readTrees reads every root on both sides; paths seen are added to seen
// when it is not nil.
func (c *Continuous) readTrees(ctx context.Context, seen map[string]struct{}) ([2][]*Tree, error) {
	var out [2][]*Tree
	for _, side := range []Side{SideA, SideB} {
		for _, root := range c.cfg.Roots {
			t, err := ReadTree(ctx, []*zkclient.Conn{c.conns[side]}, root, ReadOptions{})
			if err != nil {
				return out, err
			}
			out[side] = append(out[side], t)
			for p := range t.Nodes {
				if seen != nil {
					seen[p] = struct{}{}
				}
			}
		}
	}
	return out, nil
}

// DigestsEqual reports, per root, whether the last full reconcile found both
// ensembles equal (a root not reconciled yet is absent).
func (c *Continuous) DigestsEqual() map[string]bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]bool, len(c.digestEqual))
	for k, v := range c.digestEqual {
		out[k] = v
	}
	return out
}

// adoptAll records the current state of every path as synced (after the
// initial copy, both sides are equal by construction).
func (c *Continuous) adoptAll(ctx context.Context) error {
	var reads [2]map[string]*read
	for _, side := range []Side{SideA, SideB} {
		reads[side] = map[string]*read{}
		for _, root := range c.cfg.Roots {
			t, err := ReadTree(ctx, []*zkclient.Conn{c.conns[side]}, root, ReadOptions{})
			if err != nil {
				return err
			}
			for p, n := range t.Nodes {
				reads[side][p] = &read{exists: true, data: n.Data, stat: n.Stat, acl: n.ACL}
			}
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for p, a := range reads[SideA] {
		if b := reads[SideB][p]; b != nil && bytes.Equal(a.data, b.data) {
			c.synced[p] = [2]version{a.version(), b.version()}
		}
	}
	return nil
}

// read is one side's state of a path.
type read struct {
	exists bool
	data   []byte
	stat   jute.Stat
	acl    []jute.ACL
	// aclRead: acl was read in this round (a side's aversion moved), so
	// the ACL is compared and copied with the data.
	aclRead bool
	// noRead: the credentials may not read it (NOAUTH).
	noRead bool
}

func (r *read) version() version {
	if !r.exists {
		return version{}
	}
	return statVersion(&r.stat)
}

// readBoth reads every path on both sides, all requests in flight at once.
func (c *Continuous) readBoth(ctx context.Context, paths []string) ([2][]read, error) {
	var out [2][]read
	var calls [2][]*zkclient.Call
	var synced [2]*zkclient.Call
	for _, side := range []Side{SideA, SideB} {
		// The events come from the watcher session, possibly on another
		// server than the writer's, which may lag behind it (a follower in
		// a GC pause or on a slow disk): read there, a change the watch
		// reported can still be missing, and the round would find nothing
		// to do, leaving it to the next full reconcile. A sync first
		// (pipelined: the server answers the session's reads after it)
		// makes the reads see everything committed before the round.
		synced[side] = c.conns[side].Go(jute.OpSync, &jute.SyncRequest{Path: "/"}, &jute.SyncResponse{})
		calls[side] = make([]*zkclient.Call, len(paths))
		for i, p := range paths {
			calls[side][i] = c.conns[side].Go(jute.OpGetData, &jute.GetDataRequest{Path: p}, &jute.GetDataResponse{})
		}
	}
	for _, side := range []Side{SideA, SideB} {
		select {
		case <-synced[side].Done:
		case <-ctx.Done():
			return out, ctx.Err()
		}
		if err := synced[side].Err; err != nil {
			return out, fmt.Errorf("sync on %s before reading: %w", side, err)
		}
		out[side] = make([]read, len(paths))
		for i, call := range calls[side] {
			select {
			case <-call.Done:
			case <-ctx.Done():
				return out, ctx.Err()
			}
			switch jute.CodeOf(call.Err) {
			case jute.CodeOK:
				r := call.Resp.(*jute.GetDataResponse)
				out[side][i] = read{exists: true, data: r.Data, stat: r.Stat}
			case jute.CodeNoAuth:
				out[side][i] = read{noRead: true}
			case jute.CodeNoNode:
			default:
				return out, fmt.Errorf("read %s on %s: %w", paths[i], side, call.Err)
			}
		}
	}
	return out, nil
}

// action is one write decided in a round.
type action struct {
	path string
	from Side // the side whose state is copied
	src  read
	dst  read // the other side as read: the write is conditional on it
}

// round decides and applies the given paths.
func (c *Continuous) round(ctx context.Context, paths []string) error {
	paths = slices.DeleteFunc(slices.Clone(paths), isSessionMarker) // never synced
	if len(paths) == 0 {
		return nil
	}
	reads, err := c.readBoth(ctx, paths)
	if err != nil {
		return err
	}
	skip, err := c.readMovedACLs(ctx, paths, &reads)
	if err != nil {
		return err
	}
	// After the reads, on the same connections: a proxy session's marker
	// is committed before its ephemerals (sessions.go).
	proxied, err := c.proxiedOwners(ctx, &reads)
	if err != nil {
		return err
	}
	var noRead []UnreadableACL
	for i, p := range paths {
		for _, side := range []Side{SideA, SideB} {
			if reads[side][i].noRead {
				noRead = append(noRead, UnreadableACL{Side: side, Path: p, NoRead: true})
				skip[i] = true
			}
		}
	}
	if len(noRead) > 0 {
		c.noteUnreadable(noRead, false)
	}
	var acts []action
	now := time.Now()
	c.mu.Lock()
	c.rounds++
	for i, p := range paths {
		a, b := reads[SideA][i], reads[SideB][i]
		cur := [2]version{a.version(), b.version()}
		st, known := c.synced[p]
		if _, open := c.conflicts[p]; open {
			delete(c.deferred, p)
			continue
		}
		if c.blockedLocked(p) {
			delete(c.deferred, p)
		}
		if skip[i] || c.blockedLocked(p) {
			continue // its ACL is hidden (copying it would corrupt it), or it changed while read
		}
		if w, ok := c.forced[p]; ok {
			delete(c.forced, p)
			acts = append(acts, action{p, w, [2]read{a, b}[w], [2]read{a, b}[w.other()]})
			continue
		}
		if c.inherited[p] && a.exists != b.exists {
			if time.Since(c.begun) < c.cfg.InheritGrace {
				continue // maybe a former replicator's copy expiring: wait
			}
			delete(c.inherited, p) // the side that still has it decides
			delete(c.synced, p)
			known = false
		}
		if !known {
			inferred, how := c.inferLocked(p, [2]*read{&a, &b})
			switch how {
			case inferAgreed:
				// Both unchanged since the checkpoint yet different (an ACL
				// moved, which no zxid shows): decided as without it.
				// Beside dual-writing proxies, a path both sides changed
				// while no sync ran keeps the rule for a path nothing is
				// agreed on (wait for the mirror, then a conflict): the
				// checkpoint cannot tell the mirror's writes from a
				// bypassing writer's, and the primary must not silently
				// overwrite the other side's write.
				bothMoved := inferred[SideA] != cur[SideA] && inferred[SideB] != cur[SideB]
				if (inferred != cur || equalReads(&a, &b)) && !(bothMoved && c.primary != nil) {
					st, known = inferred, true
				}
			case inferStaleCopy:
				continue // a former replicator's copy: it expires with its session
			}
		}
		changed := [2]bool{cur[SideA] != st[SideA], cur[SideB] != st[SideB]}
		if !known {
			changed = [2]bool{a.exists, b.exists}
		}
		if !known && !c.begun.IsZero() && time.Since(c.begun) < c.cfg.InheritGrace && equalReads(&a, &b) &&
			(a.stat.EphemeralOwner != 0 || b.stat.EphemeralOwner != 0) {
			c.inherited[p] = true
		}
		if c.primary != nil && !isHeartbeat(p) {
			S := c.primary.other()
			proxiedOnS := proxied[S][[2]read{a, b}[S].stat.EphemeralOwner] && [2]read{a, b}[S].exists
			if act, ok := c.decideMirroredLocked(p, [2]read{a, b}, cur, changed, known, proxiedOnS, now); ok {
				acts = append(acts, act)
			}
			continue
		}
		switch {
		case !changed[SideA] && !changed[SideB]:
		case equalReads(&a, &b):
			c.adoptLocked(p, cur)
		case changed[SideA] && !changed[SideB]:
			acts = append(acts, action{p, SideA, a, b})
		case changed[SideB] && !changed[SideA]:
			acts = append(acts, action{p, SideB, b, a})
		default:
			if w, ok := c.conflictLocked(p, &a, &b, now); ok {
				acts = append(acts, action{p, w, [2]read{a, b}[w], [2]read{a, b}[w.other()]})
			}
		}
	}
	c.mu.Unlock()
	if len(acts) == 0 {
		return nil
	}
	return c.apply(ctx, acts)
}

// equalReads reports whether both sides hold the same state: existence,
// data and, where it was read (an aversion moved), the ACL.
func equalReads(a, b *read) bool {
	return a.exists == b.exists && (!a.exists || bytes.Equal(a.data, b.data) && !aclsToCopy(a, b))
}

// aclsToCopy reports whether src's ACL, read this round, differs from dst's.
func aclsToCopy(src, dst *read) bool {
	return src.aclRead && dst.aclRead && aclKey(src.acl) != aclKey(dst.acl)
}

// readMovedACLs reads both sides' ACLs, pipelined, for the paths present on
// both sides whose aversion moved on either since both agreed (or that a
// resolved conflict forces): setACL fires no watch, so this is where an ACL
// change made with, or before, a data change is seen, and it must reach
// the other side before that data. skip marks the paths not to decide now:
// a hidden ACL (RedactedACL) blocks the path (noteUnreadable, alert) rather
// than have its data copied under the old ACL; an ACL that changed between
// the two reads (or a node gone) is decided again.
func (c *Continuous) readMovedACLs(ctx context.Context, paths []string, reads *[2][]read) (skip []bool, err error) {
	skip = make([]bool, len(paths))
	var idx []int
	c.mu.Lock()
	for i, p := range paths {
		a, b := &reads[SideA][i], &reads[SideB][i]
		if !a.exists || !b.exists {
			continue
		}
		st, known := c.synced[p]
		_, forced := c.forced[p]
		moved := known && (!st[SideA].exists || !st[SideB].exists ||
			st[SideA].aversion != a.stat.Aversion || st[SideB].aversion != b.stat.Aversion)
		if forced || moved {
			idx = append(idx, i)
		}
	}
	c.mu.Unlock()
	if len(idx) == 0 {
		return skip, nil
	}
	var calls [2][]*zkclient.Call
	for _, side := range []Side{SideA, SideB} {
		for _, i := range idx {
			calls[side] = append(calls[side], c.conns[side].Go(jute.OpGetACL, &jute.GetACLRequest{Path: paths[i]}, &jute.GetACLResponse{}))
		}
	}
	var hidden []UnreadableACL
	for _, side := range []Side{SideA, SideB} {
		for k, i := range idx {
			call := calls[side][k]
			select {
			case <-call.Done:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			r := &reads[side][i]
			switch jute.CodeOf(call.Err) {
			case jute.CodeOK:
			case jute.CodeNoNode:
				skip[i] = true // deleted meanwhile: its deletion event follows
				continue
			case jute.CodeNoAuth:
				// Its new ACL lets the replicator read neither it nor the
				// ACL (getACL needs READ or ADMIN).
				hidden = append(hidden, UnreadableACL{Side: side, Path: paths[i], NoRead: true})
				skip[i] = true
				continue
			default:
				return nil, fmt.Errorf("read ACL of %s on %s: %w", paths[i], side, call.Err)
			}
			resp := call.Resp.(*jute.GetACLResponse)
			switch {
			case RedactedACL(resp.ACL):
				hidden = append(hidden, UnreadableACL{Side: side, Path: paths[i], ACL: resp.ACL})
				skip[i] = true
			case resp.Stat.Aversion != r.stat.Aversion || resp.Stat.Mzxid != r.stat.Mzxid:
				skip[i] = true // changed since the data read: decide it again
				select {
				case c.kick <- paths[i]:
				default: // the next reconcile handles it
				}
			default:
				r.acl, r.aclRead = resp.ACL, true
			}
		}
	}
	if len(hidden) > 0 {
		c.noteUnreadable(hidden, false)
	}
	return skip, nil
}

func (c *Continuous) adoptLocked(p string, cur [2]version) {
	if !cur[SideA].exists && !cur[SideB].exists {
		delete(c.synced, p)
		delete(c.inherited, p)
		return
	}
	c.synced[p] = cur
}

// conflictLocked records a conflict and returns the side to copy from, if
// the strategy picks one.
func (c *Continuous) conflictLocked(p string, a, b *read, now time.Time) (Side, bool) {
	k := Conflict{Time: now, Path: p, Strategy: c.cfg.Strategy, ValueA: a.data, ValueB: b.data, ExistsA: a.exists, ExistsB: b.exists}
	var winner Side
	decided := c.cfg.Strategy == LastWriteWins
	if decided {
		switch {
		case a.exists && !b.exists:
			winner = SideA // a deletion never beats an update: nothing is lost
		case b.exists && !a.exists:
			winner = SideB
		case b.stat.Mtime > a.stat.Mtime:
			winner = SideB
		default:
			winner = SideA
		}
		k.Winner = winner.String()
	} else {
		c.conflicts[p] = k
	}
	if c.cfg.Metrics != nil {
		c.cfg.Metrics.conflicts.WithLabelValues(c.cfg.Strategy).Inc()
	}
	c.emit(Event{Time: now, Kind: "conflict", Conflict: &k})
	c.log.Warn("conflict: znode changed on both sides since its last sync", "path", p, "strategy", c.cfg.Strategy, "winner", k.Winner)
	return winner, decided
}

// apply copies each action's state to the other side: deletions deepest
// first, then creations and updates parents first, pipelined per side.
func (c *Continuous) apply(ctx context.Context, acts []action) error {
	sort.SliceStable(acts, func(i, j int) bool {
		di, dj := acts[i].src.exists, acts[j].src.exists
		if di != dj {
			return !di // deletions first
		}
		if !di {
			return depth(acts[i].path) > depth(acts[j].path)
		}
		return depth(acts[i].path) < depth(acts[j].path)
	})
	acts, aclSet, err := c.copyACLs(ctx, acts)
	if err != nil {
		return err
	}
	type pendingWrite struct {
		act  action
		call *zkclient.Call
	}
	var pend []pendingWrite
	for _, a := range acts {
		to := c.conns[a.from.other()]
		var call *zkclient.Call
		// Conditional on the version read: a write that reached the
		// target since then fails BADVERSION instead of being overwritten.
		switch {
		case !a.src.exists:
			call = to.Go(jute.OpDelete, &jute.DeleteRequest{Path: a.path, Version: a.dst.stat.Version}, nil)
		case !a.dst.exists:
			call = nil // created below, with its parents
		case aclSet[a.path] != nil && bytes.Equal(a.src.data, a.dst.data):
			call = nil // only the ACL changed, and it is copied
		default:
			call = to.Go(jute.OpSetData, &jute.SetDataRequest{Path: a.path, Data: a.src.data, Version: a.dst.stat.Version}, &jute.SetDataResponse{})
		}
		pend = append(pend, pendingWrite{a, call})
	}
	for _, pw := range pend {
		code := jute.CodeNoNode
		if st := aclSet[pw.act.path]; pw.call == nil && st != nil {
			code = jute.CodeOK
		}
		if pw.call != nil {
			select {
			case <-pw.call.Done:
			case <-ctx.Done():
				return ctx.Err()
			}
			code = jute.CodeOf(pw.call.Err)
		}
		a := pw.act
		to := a.from.other()
		var newTo version
		switch {
		case code == jute.CodeBadVersion || (!a.src.exists && code == jute.CodeNoNode && a.dst.exists):
			// The target changed since it was read: decide again.
			select {
			case c.kick <- a.path:
			default: // the next reconcile handles it
			}
			continue
		case !a.src.exists && code == jute.CodeOK:
			newTo = version{}
		case !a.src.exists && code == jute.CodeNotEmpty:
			// Children not deleted yet (they arrive in a later round): the
			// next reconcile finishes it.
			continue
		case a.src.exists && code == jute.CodeOK && pw.call == nil:
			newTo = statVersion(aclSet[a.path])
		case a.src.exists && code == jute.CodeOK:
			newTo = statVersion(&pw.call.Resp.(*jute.SetDataResponse).Stat)
		case a.src.exists && code == jute.CodeNoNode:
			v, err := c.createWithParents(ctx, a.from, a.path)
			var hidden *UnreadableACLError
			if errors.As(err, &hidden) {
				c.noteUnreadable(hidden.Nodes, false)
				continue
			}
			if err != nil {
				return err
			}
			if !v.exists {
				continue // gone on the origin meanwhile: a later event handles it
			}
			newTo = v
		default:
			return fmt.Errorf("copy %s from %s to %s: %w", a.path, a.from, to, code.Err())
		}
		c.observeHeartbeat(a)
		c.mu.Lock()
		var st [2]version
		st[a.from] = a.src.version()
		st[to] = newTo
		c.adoptLocked(a.path, st)
		c.mu.Unlock()
		if c.cfg.Metrics != nil {
			c.cfg.Metrics.applied.WithLabelValues(a.from.String() + "->" + to.String()).Inc()
		}
	}
	return nil
}

// copyACLs sets, on the other side, the ACL of every action whose origin's
// ACL was read this round and differs, pipelined, and waits for them
// before any data is copied: data written after an ACL change must never
// land under the old ACL. Each setACL is conditional on the target's
// aversion as read; an action whose setACL fails (the target changed
// meanwhile, or the node went) is dropped and its path decided again. It
// returns the actions left and the target's Stat after each ACL copied.
func (c *Continuous) copyACLs(ctx context.Context, acts []action) ([]action, map[string]*jute.Stat, error) {
	calls := map[string]*zkclient.Call{}
	for _, a := range acts {
		if a.src.exists && a.dst.exists && aclsToCopy(&a.src, &a.dst) {
			calls[a.path] = c.conns[a.from.other()].Go(jute.OpSetACL,
				&jute.SetACLRequest{Path: a.path, ACL: a.src.acl, Version: a.dst.stat.Aversion}, &jute.SetACLResponse{})
		}
	}
	if len(calls) == 0 {
		return acts, nil, nil
	}
	set := make(map[string]*jute.Stat, len(calls))
	kept := acts[:0]
	for _, a := range acts {
		call := calls[a.path]
		if call == nil {
			kept = append(kept, a)
			continue
		}
		select {
		case <-call.Done:
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
		switch code := jute.CodeOf(call.Err); code {
		case jute.CodeOK:
			set[a.path] = &call.Resp.(*jute.SetACLResponse).Stat
			kept = append(kept, a)
		case jute.CodeBadVersion, jute.CodeNoNode:
			select {
			case c.kick <- a.path:
			default: // the next reconcile handles it
			}
		default:
			return nil, nil, fmt.Errorf("copy ACL of %s from %s to %s: %w", a.path, a.from, a.from.other(), code.Err())
		}
	}
	return kept, set, nil
}

// createWithParents creates p on the other side of from, copying missing
// parents first, with data, ACL and ephemeral-ness as on from. It returns
// the new version of p (not existing if p vanished from from). A znode to
// create whose ACL is hidden on from is not created: the error is an
// *UnreadableACLError, and p waits.
func (c *Continuous) createWithParents(ctx context.Context, from Side, p string) (version, error) {
	src, dst := c.conns[from], c.conns[from.other()]
	var chain []string
	for q := p; q != "/"; q = path.Dir(q) {
		chain = append([]string{q}, chain...)
	}
	var last version
	for _, q := range chain {
		data, st, err := src.Get(ctx, q)
		if jute.CodeOf(err) == jute.CodeNoNode {
			return version{}, nil
		}
		if jute.CodeOf(err) == jute.CodeNoAuth {
			return version{}, &UnreadableACLError{Nodes: []UnreadableACL{{Side: from, Path: q, NoRead: true}}}
		}
		if err != nil {
			return version{}, fmt.Errorf("read %s on %s: %w", q, from, err)
		}
		acl, _, err := src.GetACL(ctx, q)
		if jute.CodeOf(err) == jute.CodeNoNode {
			return version{}, nil // deleted between the two reads: its deletion event follows
		}
		if err != nil {
			return version{}, fmt.Errorf("read ACL of %s on %s: %w", q, from, err)
		}
		if RedactedACL(acl) {
			if q != p {
				if _, err := dst.Exists(ctx, q); err == nil {
					continue // already there: nothing to copy
				}
			}
			return version{}, &UnreadableACLError{Nodes: []UnreadableACL{{Side: from, Path: q, ACL: acl}}}
		}
		flags := jute.FlagPersistent
		if st.EphemeralOwner != 0 {
			flags = jute.FlagEphemeral
		}
		var r jute.Create2Response
		err = dst.Do(ctx, jute.OpCreate2, &jute.CreateRequest{Path: q, Data: data, ACL: acl, Flags: flags}, &r)
		switch jute.CodeOf(err) {
		case jute.CodeOK:
			last = statVersion(&r.Stat)
			if q != p {
				c.mu.Lock()
				var v [2]version
				v[from] = statVersion(&st)
				v[from.other()] = last
				c.synced[q] = v
				c.mu.Unlock()
			}
		case jute.CodeNodeExists:
			if q == p {
				s, err := dst.Set(ctx, q, data, -1)
				if err != nil {
					return version{}, fmt.Errorf("update %s on %s: %w", q, from.other(), err)
				}
				last = statVersion(&s)
			}
		default:
			return version{}, fmt.Errorf("create %s on %s: %w", q, from.other(), err)
		}
	}
	return last, nil
}

// reconcileACLs copies the ACL differences the rounds did not see (a path
// adopted with different ACLs: no aversion moved since), from the side
// that changed the ACL more often (higher aversion), conditional on the
// other side's aversion, and records the new aversions as agreed.
func (c *Continuous) reconcileACLs(ctx context.Context, paths []string) error {
	for _, p := range paths {
		aclA, stA, errA := c.conns[SideA].GetACL(ctx, p)
		aclB, stB, errB := c.conns[SideB].GetACL(ctx, p)
		if errA != nil || errB != nil || aclKey(aclA) == aclKey(aclB) {
			continue
		}
		if RedactedACL(aclA) || RedactedACL(aclB) {
			var hidden []UnreadableACL
			for side, acl := range [2][]jute.ACL{aclA, aclB} {
				if RedactedACL(acl) {
					hidden = append(hidden, UnreadableACL{Side: Side(side), Path: p, ACL: acl})
				}
			}
			c.noteUnreadable(hidden, false)
			continue // never copy a hidden ACL
		}
		from, acl := SideA, aclA
		if stB.Aversion > stA.Aversion {
			from, acl = SideB, aclB
		}
		to, toSt := from.other(), [2]jute.Stat{stA, stB}[from.other()]
		var r jute.SetACLResponse
		err := c.conns[to].Do(ctx, jute.OpSetACL, &jute.SetACLRequest{Path: p, ACL: acl, Version: toSt.Aversion}, &r)
		switch jute.CodeOf(err) {
		case jute.CodeOK:
		case jute.CodeNoNode, jute.CodeBadVersion:
			continue // changed meanwhile: the next reconcile sees it
		default:
			return fmt.Errorf("copy ACL of %s to %s: %w", p, to, err)
		}
		c.mu.Lock()
		if st, ok := c.synced[p]; ok && st[to].mzxid == r.Stat.Mzxid && st[from].mzxid == [2]jute.Stat{stA, stB}[from].Mzxid {
			st[to].aversion = r.Stat.Aversion
			st[from].aversion = [2]jute.Stat{stA, stB}[from].Aversion
			c.synced[p] = st
		}
		c.mu.Unlock()
	}
	return nil
}

// observeHeartbeat measures the lag when a heartbeat reaches the other side.
func (c *Continuous) observeHeartbeat(a action) {
	if a.path != c.heartbeatPath(a.from) || len(a.src.data) != 8 {
		return
	}
	lag := time.Since(time.Unix(0, int64(binary.BigEndian.Uint64(a.src.data))))
	c.mu.Lock()
	c.lastLag[a.from] = lag
	var fire bool
	worst := max(c.lastLag[SideA], c.lastLag[SideB])
	if worst > c.cfg.LagThreshold {
		if c.lagSince.IsZero() {
			c.lagSince = time.Now()
		} else if time.Since(c.lagSince) >= c.cfg.LagAlertAfter {
			fire = true
			c.lagSince = time.Now() // at most one alert per LagAlertAfter
		}
	} else {
		c.lagSince = time.Time{}
	}
	c.mu.Unlock()
	if c.cfg.Metrics != nil {
		c.cfg.Metrics.lag.WithLabelValues(a.from.String() + "->" + a.from.other().String()).Observe(lag.Seconds())
	}
	if c.cfg.OnLag != nil {
		c.cfg.OnLag(a.from, lag)
	}
	if fire {
		c.alert(Alert{Kind: "sync_lag", Message: fmt.Sprintf("sync lag %v above %v for %v", worst.Round(time.Millisecond), c.cfg.LagThreshold, c.cfg.LagAlertAfter)})
	}
}

func (c *Continuous) alert(a Alert) {
	a.Time = time.Now()
	c.log.Warn("alert", "kind", a.Kind, "message", a.Message)
	c.emit(Event{Time: a.Time, Kind: "alert", Alert: &a})
	if c.cfg.OnAlert != nil {
		c.cfg.OnAlert(a)
	}
}

// armOneShot sets a one-shot data (or creation) watch and a child watch on
// every path, pipelined, and returns the children's paths it listed.
func armOneShot(ctx context.Context, w *zkclient.Conn, paths []string) ([]string, error) {
	type armed struct {
		exists, kids *zkclient.Call
		path         string
	}
	calls := make([]armed, len(paths))
	for i, p := range paths {
		calls[i] = armed{
			exists: w.Go(jute.OpExists, &jute.ExistsRequest{Path: p, Watch: true}, &jute.ExistsResponse{}),
			kids:   w.Go(jute.OpGetChildren, &jute.GetChildrenRequest{Path: p, Watch: true}, &jute.GetChildrenResponse{}),
			path:   p,
		}
	}
	var kids []string
	for _, a := range calls {
		for _, call := range []*zkclient.Call{a.exists, a.kids} {
			select {
			case <-call.Done:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			if call.Err != nil && jute.CodeOf(call.Err) != jute.CodeNoNode {
				return nil, call.Err
			}
		}
		if a.kids.Err == nil {
			for _, k := range a.kids.Resp.(*jute.GetChildrenResponse).Children {
				kids = append(kids, path.Join(a.path, k))
			}
		}
	}
	return kids, nil
}
