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
	// Inflight is the number of znodes read at once (default 256).
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
		opt.Inflight = 256
	}
	t := &Tree{Root: root, Nodes: map[string]*Node{}}
	q := &workQueue{items: []string{root}}
	q.cond = sync.NewCond(&q.mu)
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	for w := 0; w < opt.Inflight; w++ {
		wg.Add(1)
		go func(c *zkclient.Conn) {
			defer wg.Done()
			for {
				p, ok := q.get()
				if !ok {
					return
				}
				n, err := readNode(ctx, c, p)
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("replicator: read %s on %s: %w", p, c.Addr(), err)
					}
					mu.Unlock()
					q.abort()
					return
				}
				if n != nil {
					mu.Lock()
					t.Nodes[p] = n
					mu.Unlock()
					if opt.Nodes != nil {
						opt.Nodes.Add(1)
						opt.Bytes.Add(int64(len(n.Data)))
					}
					kids := make([]string, len(n.Children))
					for i, k := range n.Children {
						kids[i] = path.Join(p, k)
					}
					q.put(kids)
				}
				q.done()
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
	return t, nil
}

// readNode reads data, stat and ACL (and children when there are any) of
// one znode; nil, nil if it does not exist.
func readNode(ctx context.Context, c *zkclient.Conn, p string) (*Node, error) {
	var data jute.GetDataResponse
	var acl jute.GetACLResponse
	dc := c.Go(jute.OpGetData, &jute.GetDataRequest{Path: p}, &data)
	ac := c.Go(jute.OpGetACL, &jute.GetACLRequest{Path: p}, &acl)
	for _, call := range []*zkclient.Call{dc, ac} {
		select {
		case <-call.Done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if jute.CodeOf(dc.Err) == jute.CodeNoNode || jute.CodeOf(ac.Err) == jute.CodeNoNode {
		return nil, nil
	}
	if err := errors.Join(dc.Err, ac.Err); err != nil {
		return nil, err
	}
	n := &Node{Path: p, Data: data.Data, ACL: acl.ACL, Stat: data.Stat}
	if data.Data == nil {
		n.Data = []byte{}
	}
	if data.Stat.NumChildren > 0 {
		kids, _, err := c.Children(ctx, p)
		if jute.CodeOf(err) == jute.CodeNoNode {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		sort.Strings(kids)
		n.Children = kids
	}
	return n, nil
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

func (q *workQueue) get() (string, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.items) == 0 && q.busy > 0 && !q.aborted {
		q.cond.Wait()
	}
	if q.aborted || len(q.items) == 0 {
		q.cond.Broadcast()
		return "", false
	}
	p := q.items[len(q.items)-1]
	q.items = q.items[:len(q.items)-1]
	q.busy++
	return p, true
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

func (q *workQueue) done() {
	q.mu.Lock()
	q.busy--
	q.mu.Unlock()
	q.cond.Broadcast()
}

func (q *workQueue) abort() {
	q.mu.Lock()
	q.aborted = true
	q.mu.Unlock()
	q.cond.Broadcast()
}
