package replicator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/seqcounter"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// Endpoints are the sessions Sync works with. Target[0] is the writer: every
// write goes through it, so ZooKeeper applies them in the order sent (a
// parent's create before its children's) even with many in flight, and the
// ephemerals it copies are owned by its session.
type Endpoints struct {
	Source []*zkclient.Conn
	Target []*zkclient.Conn
}

// Options tune Sync.
type Options struct {
	// Inflight is the number of znodes read at once per side (default 1024).
	Inflight int
	// BatchOps and BatchBytes bound one multi (defaults 1000 ops, 512 KiB:
	// well under jute.maxbuffer). A larger single write goes alone.
	BatchOps   int
	BatchBytes int
	// Window is the number of multis in flight (default 16).
	Window int
	// Progress, if set, is updated as Sync goes.
	Progress *Progress
	// SkipUnreadableACLs copies everything else when ZooKeeper hides some
	// digest ACLs (RedactedACL), and lists them in Result.Unreadable, instead
	// of refusing the whole copy with an *UnreadableACLError. Either way
	// nothing is ever written on the target for such a znode (nor below it,
	// where it would have to be created first).
	SkipUnreadableACLs bool
	// KeepForeignEphemerals, beside dual-writing proxies: an ephemeral on
	// the target owned by another session than the copier's, where the
	// source holds an ephemeral too, is kept (its data and ACL brought in
	// line) rather than deleted and created again under the copier's
	// session. It is a proxy's shadow session's copy of a client's node,
	// and must keep that owner: at the flip the shadow session becomes the
	// client's own, and a copy owned by the replicator would vanish with
	// the replicator's session (a control leader's death, phase 6),
	// taking a Mesos master's json.info_ with it.
	KeepForeignEphemerals bool
}

// Progress counts Sync's work; read it from another goroutine.
type Progress struct {
	SourceNodes, TargetNodes atomic.Int64 // read so far
	SourceBytes, TargetBytes atomic.Int64
	Planned                  atomic.Int64 // writes to make
	Written                  atomic.Int64 // writes made
	WrittenBytes             atomic.Int64
}

// Result summarizes one Sync.
type Result struct {
	Nodes                              int // on the source
	Bytes                              int64
	Created, Updated, Deleted, ACLsSet int
	PaddedParents, PadCreates          int
	Elapsed                            time.Duration
	// Unreadable lists the znodes left alone because their ACL is hidden
	// (with SkipUnreadableACLs), source side (A) first.
	Unreadable []UnreadableACL
}

// rootRead is what Sync read of one root before writing anything.
type rootRead struct {
	root      string
	src, dst  *Tree
	ancestors []ancestor
}

// Sync makes the target's subtrees equal to the source's: same paths (with
// sequential suffixes as they are), data, ACLs and ephemeral-ness. Ephemeral
// source nodes become ephemerals of the target writer's session. Then every
// parent of sequential children gets a creation counter on the target at
// least as high as on the source, so the next sequential create on the
// target gets a higher suffix than any copied one.
//
// Every root is read on both sides before anything is written. When
// ZooKeeper hides a digest ACL on either side (RedactedACL), Sync writes
// nothing and returns an *UnreadableACLError listing every such znode,
// unless opt.SkipUnreadableACLs.
func Sync(ctx context.Context, ep Endpoints, roots []string, opt Options) (Result, error) {
	start := time.Now()
	if opt.BatchOps <= 0 {
		opt.BatchOps = 1000
	}
	if opt.BatchBytes <= 0 {
		opt.BatchBytes = 512 << 10
	}
	if opt.Window <= 0 {
		opt.Window = 16
	}
	if opt.Progress == nil {
		opt.Progress = &Progress{}
	}
	if len(ep.Source) == 0 || len(ep.Target) == 0 {
		return Result{}, errors.New("replicator: need at least one source and one target session")
	}
	var res Result
	var reads []rootRead
	var unreadable [2][]UnreadableACL
	for _, root := range roots {
		if !strings.HasPrefix(root, "/") || (len(root) > 1 && strings.HasSuffix(root, "/")) {
			return res, fmt.Errorf("replicator: path %q: want an absolute znode path like /mesos", root)
		}
		src, err := ReadTree(ctx, ep.Source, root, ReadOptions{Inflight: opt.Inflight, Nodes: &opt.Progress.SourceNodes, Bytes: &opt.Progress.SourceBytes})
		if err != nil {
			return res, fmt.Errorf("read source %s: %w", root, err)
		}
		dst, err := ReadTree(ctx, ep.Target, root, ReadOptions{Inflight: opt.Inflight, Nodes: &opt.Progress.TargetNodes, Bytes: &opt.Progress.TargetBytes})
		if err != nil {
			return res, fmt.Errorf("read target %s: %w", root, err)
		}
		anc, err := readAncestors(ctx, ep.Source[0], root)
		if err != nil {
			return res, err
		}
		for _, a := range anc {
			if a.noRead {
				unreadable[SideA] = append(unreadable[SideA], UnreadableACL{Side: SideA, Path: a.path, NoRead: true})
			} else if RedactedACL(a.acl) {
				unreadable[SideA] = append(unreadable[SideA], UnreadableACL{Side: SideA, Path: a.path, ACL: a.acl})
			}
		}
		unreadable[SideA] = append(unreadable[SideA], unreadableIn(src, SideA)...)
		unreadable[SideB] = append(unreadable[SideB], unreadableIn(dst, SideB)...)
		reads = append(reads, rootRead{root, src, dst, anc})
	}
	res.Unreadable = append(unreadable[SideA], unreadable[SideB]...)
	if len(res.Unreadable) > 0 && !opt.SkipUnreadableACLs {
		return res, &UnreadableACLError{Nodes: res.Unreadable}
	}
	blocked := map[string]bool{}
	var noRead []string
	for _, u := range res.Unreadable {
		blocked[u.Path] = true
		if u.NoRead {
			noRead = append(noRead, u.Path)
		}
	}
	// Nothing below a znode that cannot be read is known on that side:
	// leave the subtree alone on both.
	for _, r := range reads {
		for _, t := range []*Tree{r.src, r.dst} {
			for q := range t.Nodes {
				for _, p := range noRead {
					if strings.HasPrefix(q, p+"/") {
						blocked[q] = true
					}
				}
			}
		}
	}
	for _, r := range reads {
		src, dst := r.src, r.dst
		res.Nodes += len(src.Nodes)
		for _, n := range src.Nodes {
			res.Bytes += int64(len(n.Data))
		}
		ok, err := createAncestors(ctx, ep.Target[0], r.ancestors)
		if err != nil {
			return res, err
		}
		if !ok {
			continue // an ancestor with a hidden ACL is missing on the target
		}
		p := plan(src, dst, ep.Target[0].SessionID(), blocked, opt.KeepForeignEphemerals)
		opt.Progress.Planned.Add(int64(len(p.deletes) + len(p.creates) + len(p.updates) + len(p.acls)))
		w := &writer{c: ep.Target[0], opt: opt}
		for _, stage := range []struct {
			name string
			ops  []zkclient.MultiOp
		}{{"delete", p.deletes}, {"create", p.creates}, {"update", p.updates}} {
			if err := w.apply(ctx, stage.ops); err != nil {
				return res, fmt.Errorf("%s on target: %w", stage.name, err)
			}
		}
		if err := w.setACLs(ctx, p.acls); err != nil {
			return res, err
		}
		res.Deleted += len(p.deletes)
		res.Created += len(p.creates)
		res.Updated += len(p.updates)
		res.ACLsSet += len(p.acls)
		parents, pads, err := padSequenceCounters(ctx, ep.Target[0], src, func(q string) bool { return blocked[q] || p.skipped[q] })
		if err != nil {
			return res, err
		}
		res.PaddedParents += parents
		res.PadCreates += pads
	}
	res.Elapsed = time.Since(start)
	return res, nil
}

// ancestor is one ancestor of a root as read on the source.
type ancestor struct {
	path   string
	data   []byte
	acl    []jute.ACL
	noRead bool // NOAUTH: the credentials may not read it
}

// readAncestors reads the root's ancestors on the source, parents first.
func readAncestors(ctx context.Context, src *zkclient.Conn, root string) ([]ancestor, error) {
	var chain []string
	for p := path.Dir(root); p != "/"; p = path.Dir(p) {
		chain = append([]string{p}, chain...)
	}
	out := make([]ancestor, 0, len(chain))
	for _, p := range chain {
		data, _, err := src.Get(ctx, p)
		if jute.CodeOf(err) == jute.CodeNoAuth {
			out = append(out, ancestor{path: p, noRead: true})
			continue
		}
		if err != nil && jute.CodeOf(err) != jute.CodeNoNode {
			return nil, fmt.Errorf("read source %s: %w", p, err)
		}
		acl, _, err := src.GetACL(ctx, p)
		if err != nil {
			acl = zkclient.OpenACL
		}
		out = append(out, ancestor{path: p, data: data, acl: acl})
	}
	return out, nil
}

// createAncestors creates the root's missing ancestors on the target, with
// the source's data and ACL. An ancestor whose ACL is hidden (or that the
// credentials may not read) is never created: if it is missing, ok is false and the root must be left alone.
func createAncestors(ctx context.Context, dst *zkclient.Conn, anc []ancestor) (ok bool, err error) {
	for _, a := range anc {
		if a.noRead || RedactedACL(a.acl) {
			if _, err := dst.Exists(ctx, a.path); err != nil {
				if jute.CodeOf(err) == jute.CodeNoNode {
					return false, nil
				}
				return false, fmt.Errorf("stat ancestor %s on target: %w", a.path, err)
			}
			continue
		}
		_, err = dst.Create(ctx, a.path, a.data, a.acl, jute.FlagPersistent)
		if err != nil && jute.CodeOf(err) != jute.CodeNodeExists {
			return false, fmt.Errorf("create ancestor %s on target: %w", a.path, err)
		}
	}
	return true, nil
}

type syncPlan struct {
	deletes, creates, updates []zkclient.MultiOp
	acls                      []aclFix
	// skipped are the source paths not created because their ACL, or an
	// ancestor's that is missing on the target, is hidden.
	skipped map[string]bool
}

type aclFix struct {
	path string
	acl  []jute.ACL
}

func depth(p string) int { return strings.Count(p, "/") }

// parentOf is path.Dir for znode paths.
func parentOf(p string) string { return path.Dir(p) }

// plan computes the writes that turn dst into src. Deletes go deepest
// first; creates parents first. A copied ephemeral owned by another session
// than owner (a previous run's) is created again, or it would vanish with
// that session. A node with children is created with an open
// ACL and gets its own ACL after its children exist, so a restrictive parent
// never blocks them. Nothing is planned for a blocked path (its ACL is
// hidden on either side): not for it, not for its ancestors' deletion, not
// for its descendants' creation when it would have to be created first.
func plan(src, dst *Tree, owner int64, blocked map[string]bool, keepForeign bool) syncPlan {
	p := syncPlan{skipped: map[string]bool{}}
	var gone []string
	keep := map[string]bool{} // blocked target-only nodes and their ancestors
	for path, d := range dst.Nodes {
		s := src.Nodes[path]
		foreign := d.Ephemeral() && d.Stat.EphemeralOwner != owner && !(keepForeign && s != nil)
		if s == nil || s.Ephemeral() != d.Ephemeral() || foreign {
			if blocked[path] {
				for q := path; q != "/" && !keep[q]; q = parentOf(q) {
					keep[q] = true
				}
				continue
			}
			gone = append(gone, path)
		}
	}
	if len(keep) > 0 {
		kept := gone[:0]
		for _, path := range gone {
			if !keep[path] {
				kept = append(kept, path)
			}
		}
		gone = kept
	}
	sort.Slice(gone, func(i, j int) bool {
		if depth(gone[i]) != depth(gone[j]) {
			return depth(gone[i]) > depth(gone[j])
		}
		return gone[i] > gone[j]
	})
	recreate := map[string]bool{}
	for _, path := range gone {
		p.deletes = append(p.deletes, zkclient.MultiOp{Op: jute.OpDelete, Req: &jute.DeleteRequest{Path: path, Version: -1}})
		recreate[path] = true
	}
	paths := src.Sorted()
	sort.SliceStable(paths, func(i, j int) bool { return depth(paths[i]) < depth(paths[j]) })
	for _, path := range paths {
		s := src.Nodes[path]
		d := dst.Nodes[path]
		if blocked[path] && (d == nil || recreate[path]) || p.skipped[parentOf(path)] {
			p.skipped[path] = true
			continue
		}
		if blocked[path] {
			continue
		}
		if d == nil || recreate[path] {
			flags := jute.FlagPersistent
			if s.Ephemeral() {
				flags = jute.FlagEphemeral
			}
			acl := s.ACL
			if len(s.Children) > 0 && aclKey(acl) != aclKey(zkclient.OpenACL) {
				acl = zkclient.OpenACL
				p.acls = append(p.acls, aclFix{path, s.ACL})
			}
			p.creates = append(p.creates, zkclient.MultiOp{Op: jute.OpCreate,
				Req: &jute.CreateRequest{Path: path, Data: s.Data, ACL: acl, Flags: flags}})
			continue
		}
		if !bytes.Equal(s.Data, d.Data) {
			p.updates = append(p.updates, zkclient.MultiOp{Op: jute.OpSetData, Req: &jute.SetDataRequest{Path: path, Data: s.Data, Version: -1}})
		}
		if aclKey(s.ACL) != aclKey(d.ACL) {
			p.acls = append(p.acls, aclFix{path, s.ACL})
		}
	}
	return p
}

// writer applies ops to the target through one session, in order, in
// pipelined multi batches.
type writer struct {
	c   *zkclient.Conn
	opt Options
}

func opSize(op zkclient.MultiOp) int {
	switch r := op.Req.(type) {
	case *jute.CreateRequest:
		n := len(r.Path) + len(r.Data) + 32
		for _, a := range r.ACL {
			n += len(a.ID.Scheme) + len(a.ID.ID) + 16
		}
		return n
	case *jute.SetDataRequest:
		return len(r.Path) + len(r.Data) + 32
	case *jute.DeleteRequest:
		return len(r.Path) + 24
	}
	return 64
}

// batches cuts ops into multis bounded by BatchOps and BatchBytes.
func (w *writer) batches(ops []zkclient.MultiOp) [][]zkclient.MultiOp {
	var out [][]zkclient.MultiOp
	var cur []zkclient.MultiOp
	size := 0
	for _, op := range ops {
		s := opSize(op)
		if len(cur) > 0 && (len(cur) >= w.opt.BatchOps || size+s > w.opt.BatchBytes) {
			out = append(out, cur)
			cur, size = nil, 0
		}
		cur = append(cur, op)
		size += s
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}

// apply sends the batches with up to Window in flight. A batch that fails
// (the tree changed under us: a node created or deleted meanwhile) is redone
// one op at a time, in order, tolerating what makes the target converge
// anyway.
func (w *writer) apply(ctx context.Context, ops []zkclient.MultiOp) error {
	type inflight struct {
		call  *zkclient.Call
		batch []zkclient.MultiOp
	}
	var window []inflight
	var failed [][]zkclient.MultiOp
	finish := func(f inflight) error {
		select {
		case <-f.call.Done:
		case <-ctx.Done():
			return ctx.Err()
		}
		var err error
		if f.call.Op == jute.OpMulti {
			_, err = zkclient.MultiErr(f.call)
		} else {
			err = f.call.Err
		}
		if err != nil {
			if errors.Is(err, zkclient.ErrClosed) {
				return err
			}
			failed = append(failed, f.batch)
			return nil
		}
		w.count(f.batch)
		return nil
	}
	for _, b := range w.batches(ops) {
		var call *zkclient.Call
		if len(b) == 1 {
			call = w.c.Go(b[0].Op, b[0].Req, respFor(b[0].Op))
		} else {
			call = w.c.GoMulti(b)
		}
		window = append(window, inflight{call, b})
		if len(window) >= w.opt.Window {
			if err := finish(window[0]); err != nil {
				return err
			}
			window = window[1:]
		}
	}
	for _, f := range window {
		if err := finish(f); err != nil {
			return err
		}
	}
	for _, b := range failed {
		for _, op := range b {
			if err := w.one(ctx, op); err != nil {
				return err
			}
		}
		w.count(b)
	}
	return nil
}

func respFor(op jute.Op) jute.Record {
	switch op {
	case jute.OpCreate:
		return &jute.CreateResponse{}
	case jute.OpSetData:
		return &jute.SetDataResponse{}
	}
	return nil
}

// one applies a single op so that the target converges whatever happened
// meanwhile: a create that finds the node sets its data; a delete or update
// of a node already gone is done.
func (w *writer) one(ctx context.Context, op zkclient.MultiOp) error {
	err := w.c.Do(ctx, op.Op, op.Req, respFor(op.Op))
	switch code := jute.CodeOf(err); {
	case code == jute.CodeOK:
		return nil
	case op.Op == jute.OpCreate && code == jute.CodeNodeExists:
		r := op.Req.(*jute.CreateRequest)
		_, err := w.c.Set(ctx, r.Path, r.Data, -1)
		return err
	case (op.Op == jute.OpDelete || op.Op == jute.OpSetData) && code == jute.CodeNoNode:
		return nil
	case op.Op == jute.OpDelete && code == jute.CodeNotEmpty:
		return fmt.Errorf("delete %s: it has children the source does not have (a writer is adding them): %w", op.Req.(*jute.DeleteRequest).Path, err)
	}
	return fmt.Errorf("%s: %w", op.Op, err)
}

func (w *writer) count(b []zkclient.MultiOp) {
	w.opt.Progress.Written.Add(int64(len(b)))
	var n int64
	for _, op := range b {
		n += int64(opSize(op))
	}
	w.opt.Progress.WrittenBytes.Add(n)
}

// setACLs applies ACLs (not allowed inside a multi) pipelined, deepest
// first.
func (w *writer) setACLs(ctx context.Context, fixes []aclFix) error {
	sort.SliceStable(fixes, func(i, j int) bool { return depth(fixes[i].path) > depth(fixes[j].path) })
	calls := make([]*zkclient.Call, len(fixes))
	for i, f := range fixes {
		calls[i] = w.c.Go(jute.OpSetACL, &jute.SetACLRequest{Path: f.path, ACL: f.acl, Version: -1}, &jute.SetACLResponse{})
	}
	for i, call := range calls {
		select {
		case <-call.Done:
		case <-ctx.Done():
			return ctx.Err()
		}
		if call.Err != nil && jute.CodeOf(call.Err) != jute.CodeNoNode {
			return fmt.Errorf("setACL %s on target: %w (the replicator's credentials must hold ADMIN on it)", fixes[i].path, call.Err)
		}
		w.opt.Progress.Written.Add(1)
	}
	return nil
}

// CreateCounter is seqcounter.Creates: the number of children ever
// created under a node.
func CreateCounter(st jute.Stat) int64 { return seqcounter.Creates(st) }

// PadSequenceCounters raises, on c's ensemble, the creation counter of
// every parent with sequential children in src to at least src's (the
// flip's guard does it on the new primary). It returns the parents padded
// and the creates that took.
func PadSequenceCounters(ctx context.Context, c *zkclient.Conn, src *Tree) (parents, creates int, err error) {
	return padSequenceCounters(ctx, c, src, func(string) bool { return false })
}

// padSequenceCounters raises, on the target, the creation counter of every
// source parent with sequential children to at least the source's, by
// creating and deleting a padding child (each create adds one; deletes do
// not count), in multis of up to 500 pairs. Parents for which skip is true
// are left alone.
func padSequenceCounters(ctx context.Context, c *zkclient.Conn, src *Tree, skip func(string) bool) (parents, creates int, err error) {
	for _, p := range src.Sorted() {
		if skip(p) {
			continue
		}
		n := src.Nodes[p]
		seq := false
		for _, k := range n.Children {
			if seqcounter.IsSequentialName(k) {
				seq = true
				break
			}
		}
		if !seq {
			continue
		}
		st, err := c.Exists(ctx, p)
		if err != nil {
			return parents, creates, fmt.Errorf("stat %s on target: %w", p, err)
		}
		missing := CreateCounter(n.Stat) - CreateCounter(st)
		if missing <= 0 {
			continue
		}
		parents++
		if err := seqcounter.Raise(ctx, c, p, missing); err != nil {
			return parents, creates, fmt.Errorf("on target: %w", err)
		}
		creates += int(missing)
	}
	return parents, creates, nil
}
