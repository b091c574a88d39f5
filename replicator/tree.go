// Package replicator copies ZooKeeper subtrees from one ensemble to another
// and proves the copy with digests.
//
// Sync reads the source and target subtrees with pipelined requests over
// several sessions, computes the difference and applies it to the target in
// batched multi transactions (parents before children, restrictive ACLs
// after the subtree exists), then raises every sequential parent's counter
// on the target to the source's. Because it applies a difference, an
// interrupted Sync resumes where it stopped when run again.
//
// Usage:
//
//	res, err := replicator.Sync(ctx, replicator.Endpoints{Source: srcConns, Target: dstConns},
//		[]string{"/mesos"}, replicator.Options{})
//	d, err := replicator.Validate(ctx, ep, []string{"/mesos"}, 10)
//	fmt.Println(d.Equal, d.SourceDigest, d.Differences)
package replicator

import (
	"context"
	"errors"
	"fmt"
	"path"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// Node is one znode as read from an ensemble.
type Node struct {
	Path     string
	Data     []byte
	ACL      []jute.ACL
	Stat     jute.Stat
	Children []string // names, sorted
}

// Ephemeral reports whether the node is owned by a session.
func (n *Node) Ephemeral() bool { return n.Stat.EphemeralOwner != 0 }

// Tree is a subtree read from one ensemble. It is not an atomic snapshot:
// nodes are read while the ensemble changes.
type Tree struct {
	Root  string
	Nodes map[string]*Node
	// Unreadable lists, in path order, the nodes whose ACL ZooKeeper
	// redacted (RedactedACL): they can be neither copied nor verified.
	Unreadable []string
	// NoRead lists, in path order, the nodes the reader may not read at
	// all (NOAUTH: no READ permission): they are not in Nodes, nor is
	// anything below them.
	NoRead []string
}

// Sorted returns the paths in lexical order (parents before children).
func (t *Tree) Sorted() []string {
	out := make([]string, 0, len(t.Nodes))
	for p := range t.Nodes {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// ReadOptions tune ReadTree.
type ReadOptions struct {
	// Inflight is the number of znodes read at once (default 1024, in
	// multiRead chunks of 64).
	Inflight int
	// Nodes and Bytes, if set, count progress.
	Nodes, Bytes *atomic.Int64
}

// ReadTree reads the subtree at root with pipelined requests spread over
// conns. A missing root gives an empty tree. Nodes deleted while it reads are
// left out.
func ReadTree(ctx context.Context, conns []*zkclient.Conn, root string, opt ReadOptions) (*Tree, error) {
	if len(conns) == 0 {
		return nil, errors.New("replicator: no connections to read with")
	}
	if opt.Inflight <= 0 {
		opt.Inflight = 1024
	}
	workers := max(opt.Inflight/readChunk, len(conns))
	t := &Tree{Root: root, Nodes: map[string]*Node{}}
	q := &workQueue{items: []string{root}}
	q.cond = sync.NewCond(&q.mu)
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(c *zkclient.Conn) {
			defer wg.Done()
			for {
				ps := q.get(readChunk)
				if len(ps) == 0 {
					return
				}
				nodes, noRead, err := readNodes(ctx, c, ps)
				nodes = withoutMarkers(nodes) // the proxies' session markers: never copied nor compared
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("replicator: read on %s: %w", c.Addr(), err)
					}
					mu.Unlock()
					q.abort()
					return
				}
				var kids []string
				mu.Lock()
				t.NoRead = append(t.NoRead, noRead...)
				for _, n := range nodes {
					t.Nodes[n.Path] = n
					if RedactedACL(n.ACL) {
						t.Unreadable = append(t.Unreadable, n.Path)
					}
					for _, k := range n.Children {
						kids = append(kids, path.Join(n.Path, k))
					}
				}
				mu.Unlock()
				if opt.Nodes != nil {
					for _, n := range nodes {
						opt.Nodes.Add(1)
						opt.Bytes.Add(int64(len(n.Data)))
					}
				}
				q.put(kids)
				q.done(len(ps))
			}
		}(conns[w%len(conns)])
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	sort.Strings(t.Unreadable)
	sort.Strings(t.NoRead)
	return t, nil
}

// readChunk is how many znodes one multiRead covers.
const readChunk = 64

// readNodes reads a chunk of znodes: their data and stat in one multiRead,
// the children of those that have some in another, and each ACL (getACL has
// no batched form), all pipelined. Missing nodes are left out; those the
// reader may not read (NOAUTH) are listed in noRead.
func readNodes(ctx context.Context, c *zkclient.Conn, ps []string) (_ []*Node, noRead []string, _ error) {
	wait := func(call *zkclient.Call) error {
		select {
		case <-call.Done:
			return call.Err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	ops := make([]zkclient.MultiOp, len(ps))
	for i, p := range ps {
		ops[i] = zkclient.MultiOp{Op: jute.OpGetData, Req: &jute.GetDataRequest{Path: p}}
	}
	dataCall := c.Go(jute.OpMultiRead, zkclient.MultiRequest(ops), &jute.MultiResponse{})
	aclCalls := make([]*zkclient.Call, len(ps))
	for i, p := range ps {
		aclCalls[i] = c.Go(jute.OpGetACL, &jute.GetACLRequest{Path: p}, &jute.GetACLResponse{})
	}
	if err := wait(dataCall); err != nil {
		return nil, nil, fmt.Errorf("multiRead (needs ZooKeeper 3.6+): %w", err)
	}
	results := dataCall.Resp.(*jute.MultiResponse).Results
	if len(results) != len(ps) {
		return nil, nil, fmt.Errorf("multiRead returned %d results for %d reads", len(results), len(ps))
	}
	nodes := make([]*Node, len(ps))
	var withKids []int
	for i, r := range results {
		d, ok := r.Resp.(*jute.GetDataResponse)
		if !ok {
			switch code := jute.Code(r.Header.Err); code {
			case jute.CodeNoNode:
			case jute.CodeNoAuth:
				noRead = append(noRead, ps[i])
			default:
				return nil, nil, fmt.Errorf("read %s: %w", ps[i], code.Err())
			}
			continue
		}
		n := &Node{Path: ps[i], Data: d.Data, Stat: d.Stat}
		if n.Data == nil {
			n.Data = []byte{}
		}
		nodes[i] = n
		if d.Stat.NumChildren > 0 {
			withKids = append(withKids, i)
		}
	}
	if len(withKids) > 0 {
		kops := make([]zkclient.MultiOp, len(withKids))
		for k, i := range withKids {
			kops[k] = zkclient.MultiOp{Op: jute.OpGetChildren, Req: &jute.GetChildrenRequest{Path: ps[i]}}
		}
		kidsCall := c.Go(jute.OpMultiRead, zkclient.MultiRequest(kops), &jute.MultiResponse{})
		if err := wait(kidsCall); err != nil {
			return nil, nil, err
		}
		for k, r := range kidsCall.Resp.(*jute.MultiResponse).Results {
			i := withKids[k]
			g, ok := r.Resp.(*jute.GetChildrenResponse)
			if !ok {
				nodes[i] = nil // deleted meanwhile
				continue
			}
			sort.Strings(g.Children)
			nodes[i].Children = g.Children
		}
	}
	out := nodes[:0]
	for i, call := range aclCalls {
		err := wait(call)
		if nodes[i] == nil {
			continue
		}
		if jute.CodeOf(err) == jute.CodeNoNode {
			continue
		}
		if err != nil {
			return nil, nil, fmt.Errorf("getACL %s: %w", ps[i], err)
		}
		nodes[i].ACL = call.Resp.(*jute.GetACLResponse).ACL
		out = append(out, nodes[i])
	}
	return out, noRead, nil
}

// workQueue hands paths to the readers and knows when the walk is over:
// nothing queued and nothing being read.
type workQueue struct {
	mu      sync.Mutex
	cond    *sync.Cond
	items   []string
	busy    int
	aborted bool
}

// get takes up to n paths; none means the walk is over.
func (q *workQueue) get(n int) []string {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.items) == 0 && q.busy > 0 && !q.aborted {
		q.cond.Wait()
	}
	if q.aborted || len(q.items) == 0 {
		q.cond.Broadcast()
		return nil
	}
	k := min(n, len(q.items))
	ps := append([]string(nil), q.items[len(q.items)-k:]...)
	q.items = q.items[:len(q.items)-k]
	q.busy += k
	return ps
}

func (q *workQueue) put(ps []string) {
	if len(ps) == 0 {
		return
	}
	q.mu.Lock()
	q.items = append(q.items, ps...)
	q.mu.Unlock()
	q.cond.Broadcast()
}

func (q *workQueue) done(n int) {
	q.mu.Lock()
	q.busy -= n
	q.mu.Unlock()
	q.cond.Broadcast()
}

func (q *workQueue) abort() {
	q.mu.Lock()
	q.aborted = true
	q.mu.Unlock()
	q.cond.Broadcast()
}
