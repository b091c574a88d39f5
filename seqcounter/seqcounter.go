// Package seqcounter reads and raises ZooKeeper's sequential-name counter
// of a parent znode (hard problem 2 of the design brief). ZooKeeper names
// a sequential child after its parent's count of children ever created,
// so a copy of a tree, or a mirror that coalesces a create and delete it
// saw late, leaves the copy's counter behind the original's, and the next
// sequential create there would reuse a name (NODEEXISTS) or sort below
// an existing sibling (a Mesos master with a lower json.info_ suffix takes
// the lead). Raise brings the counter up by creating and deleting a
// padding child.
package seqcounter

import (
	"context"
	"fmt"
	"path"

	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// PadName is the child Raise creates and deletes.
const PadName = "zk-migrate-pad"

// IsSequentialName reports whether a child name ends in ZooKeeper's
// ten-digit sequence suffix.
func IsSequentialName(name string) bool {
	if len(name) < 10 {
		return false
	}
	for _, c := range name[len(name)-10:] {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// Creates is the number of children ever created under a node, the
// counter ZooKeeper's next sequential suffix comes from. The Stat shows
// cversion = 2*creates - numChildren (DataNode.copyStat), so
// creates = (cversion + numChildren) / 2.
func Creates(st jute.Stat) int64 { return (int64(st.Cversion) + int64(st.NumChildren)) / 2 }

// Raise adds missing to the creation counter of parent on c's ensemble by
// creating and deleting PadName under it (each create adds one; deletes
// do not count), in multis of up to 500 pairs. Nothing is left behind.
func Raise(ctx context.Context, c *zkclient.Conn, parent string, missing int64) error {
	pad := path.Join(parent, PadName)
	for missing > 0 {
		k := min(missing, 500)
		ops := make([]zkclient.MultiOp, 0, 2*k)
		for i := int64(0); i < k; i++ {
			ops = append(ops,
				zkclient.MultiOp{Op: jute.OpCreate, Req: &jute.CreateRequest{Path: pad, Data: []byte{}, ACL: zkclient.OpenACL}},
				zkclient.MultiOp{Op: jute.OpDelete, Req: &jute.DeleteRequest{Path: pad, Version: -1}})
		}
		call := c.GoMulti(ops)
		select {
		case <-call.Done:
		case <-ctx.Done():
			return fmt.Errorf("raise the sequence counter of %s: %w", parent, ctx.Err())
		}
		if _, err := zkclient.MultiErr(call); err != nil {
			return fmt.Errorf("raise the sequence counter of %s: %w", parent, err)
		}
		missing -= k
	}
	return nil
}

// Match raises parent's counter on to to at least its counter on from
// (both read now) and returns by how much.
func Match(ctx context.Context, from, to *zkclient.Conn, parent string) (int64, error) {
	fst, err := from.Exists(ctx, parent)
	if err != nil {
		return 0, fmt.Errorf("stat %s: %w", parent, err)
	}
	tst, err := to.Exists(ctx, parent)
	if err != nil {
		return 0, fmt.Errorf("stat %s on the other ensemble: %w", parent, err)
	}
	missing := Creates(fst) - Creates(tst)
	if missing <= 0 {
		return 0, nil
	}
	return missing, Raise(ctx, to, parent, missing)
}
