// Package fence is the epoch znode that fences writes across a flip
// (SPEC.md 4.10, hard problem 7). Each ensemble holds one znode, Path,
// whose data names the flip epoch and the primary it chose. A proxy sends
// every write as a multi that starts with a version check of that znode
// (the version it learned when it took its epoch), so raising the record
// (a setData, which bumps the version) makes every write of a proxy that
// missed the flip fail atomically, without that proxy's cooperation: the
// construction of Kafka's KIP-866, which checks an epoch znode in the same
// multi as every ZooKeeper write.
//
// Usage:
//
//	rec, err := fence.Raise(ctx, conn, fence.Path, 3, ensemble.Target) // control plane, per ensemble
//	rec, err = fence.Read(ctx, conn, fence.Path)                        // proxy: epoch, primary, version
package fence

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// Path is the fence znode on each ensemble. It lies outside the
// migration's paths (the replicator must never copy it: every copy would
// bump its version and fence every proxy).
const Path = "/zk-migrate-fence"

// Record is the fence's content on one ensemble and the znode's version.
type Record struct {
	Epoch   int64         `json:"epoch"`
	Primary ensemble.Name `json:"primary,omitempty"` // empty before the first flip
	Version int32         `json:"-"`
}

// Read syncs c's server with its leader and reads the fence at path
// (Path unless a test isolates its own), creating it
// (epoch 0, no primary) when it does not exist yet.
func Read(ctx context.Context, c *zkclient.Conn, path string) (Record, error) {
	return read(ctx, c, path, true)
}

// ErrMissing means the fence znode does not exist where a flip has been
// recorded: someone deleted it. Recreating it at epoch 0 would unfence
// every proxy that missed a flip, so a proxy past epoch 0 refuses to.
var ErrMissing = errors.New("the fence znode is missing although a flip epoch is held (deleted by hand?): refusing to recreate it at epoch 0; the control plane recreates it at the next flip (zk-migrate advance --phase flip, or rollback)")

// ReadExisting is Read without creating the znode: ErrMissing if absent.
func ReadExisting(ctx context.Context, c *zkclient.Conn, path string) (Record, error) {
	return read(ctx, c, path, false)
}

func read(ctx context.Context, c *zkclient.Conn, path string, create bool) (Record, error) {
	for {
		if err := c.Sync(ctx, path); err != nil && jute.CodeOf(err) != jute.CodeNoNode {
			return Record{}, fmt.Errorf("sync before reading %s: %w", path, err)
		}
		data, st, err := c.Get(ctx, path)
		if jute.CodeOf(err) == jute.CodeNoNode {
			if !create {
				return Record{}, fmt.Errorf("%s: %w", path, ErrMissing)
			}
			body, _ := json.Marshal(Record{})
			_, err = c.Create(ctx, path, body, zkclient.OpenACL, 0)
			if err != nil && jute.CodeOf(err) != jute.CodeNodeExists {
				return Record{}, fmt.Errorf("create %s: %w", path, err)
			}
			continue
		}
		if err != nil {
			return Record{}, fmt.Errorf("read %s: %w", path, err)
		}
		var r Record
		if len(data) > 0 {
			if err := json.Unmarshal(data, &r); err != nil {
				return Record{}, fmt.Errorf("%s holds %q, not a fence record: %w (remove it only if no flip ever ran)", path, data, err)
			}
		}
		r.Version = st.Version
		return r, nil
	}
}

// Raise makes the fence on c's ensemble record epoch and primary unless
// it records epoch or a later one already (then it is left as it is, so
// repeating a raise never fences the proxies that learned it). It returns
// the record now held.
func Raise(ctx context.Context, c *zkclient.Conn, path string, epoch int64, primary ensemble.Name) (Record, error) {
	for {
		r, err := Read(ctx, c, path)
		if err != nil {
			return Record{}, err
		}
		if r.Epoch >= epoch {
			return r, nil
		}
		body, _ := json.Marshal(Record{Epoch: epoch, Primary: primary})
		st, err := c.Set(ctx, path, body, r.Version)
		if jute.CodeOf(err) == jute.CodeBadVersion {
			continue // raised meanwhile: read again
		}
		if err != nil {
			return Record{}, fmt.Errorf("raise %s to epoch %d: %w", path, epoch, err)
		}
		return Record{Epoch: epoch, Primary: primary, Version: st.Version}, nil
	}
}

// Check is the multi op that makes a write conditional on the fence
// version v.
func Check(path string, v int32) jute.MultiOp {
	return jute.MultiOp{Header: jute.MultiHeader{Type: int32(jute.OpCheck), Err: -1},
		Req: &jute.CheckVersionRequest{Path: path, Version: v}}
}
