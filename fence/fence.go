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

// Hold markers close the race between a proxy's hold running out and the
// control plane raising the fence (SPEC.md 4.10). A proxy that holds for a
// barrier arms a marker, a child of the fence znode named after it, and
// tells the control plane the marker's version. The control plane raises
// the old primary's fence with RaiseIf: one multi that checks every held
// proxy's marker version and sets the fence. A proxy whose hold runs out
// calls Resume: one multi that checks the fence version and bumps its
// marker. ZooKeeper orders the two multis: either the fence was raised
// first (Resume finds it: the proxy swaps instead of resuming, its
// clients see a longer pause, never a fenced write), or the proxy resumed
// first (RaiseIf fails on its marker, raises nothing, and names the proxy:
// the control plane holds it again and raises once it holds).

// Marker is a proxy's hold marker and the version it had when the proxy
// answered the hold.
type Marker struct {
	Path    string `json:"path"`
	Version int32  `json:"version"`
}

// MarkerPath is the hold marker of the proxy called name under the fence
// at path ('/' in the name becomes '_').
func MarkerPath(path, name string) string {
	b := []byte(name)
	for i, c := range b {
		if c == '/' {
			b[i] = '_'
		}
	}
	return path + "/hold-" + string(b)
}

// Arm creates or bumps the hold marker at marker (a child of the fence)
// and returns its version now: a version no Resume has changed yet.
func Arm(ctx context.Context, c *zkclient.Conn, marker string) (Marker, error) {
	for {
		st, err := c.Set(ctx, marker, nil, -1)
		if jute.CodeOf(err) == jute.CodeNoNode {
			_, err = c.Create(ctx, marker, nil, zkclient.OpenACL, 0)
			if err == nil || jute.CodeOf(err) == jute.CodeNodeExists {
				continue // created (version 0) or raced: bump it to learn the version
			}
		}
		if err != nil {
			return Marker{}, fmt.Errorf("arm the hold marker %s: %w", marker, err)
		}
		return Marker{Path: marker, Version: st.Version}, nil
	}
}

// RaiseIf is Raise made conditional on every marker still having its
// version: a proxy whose marker changed resumed its clients before the
// fence could be raised, and raising it now would make its clients'
// writes fail. Then nothing is raised and lapsed lists the indexes of the
// markers that changed (or vanished). A fence already at epoch or later is
// left alone, whatever the markers.
func RaiseIf(ctx context.Context, c *zkclient.Conn, path string, epoch int64, primary ensemble.Name, markers []Marker) (rec Record, lapsed []int, err error) {
	if len(markers) == 0 {
		rec, err = Raise(ctx, c, path, epoch, primary)
		return rec, nil, err
	}
	for {
		r, err := Read(ctx, c, path)
		if err != nil {
			return Record{}, nil, err
		}
		if r.Epoch >= epoch {
			return r, nil, nil
		}
		body, _ := json.Marshal(Record{Epoch: epoch, Primary: primary})
		ops := make([]zkclient.MultiOp, 0, len(markers)+1)
		for _, m := range markers {
			ops = append(ops, zkclient.MultiOp{Op: jute.OpCheck, Req: &jute.CheckVersionRequest{Path: m.Path, Version: m.Version}})
		}
		ops = append(ops, zkclient.MultiOp{Op: jute.OpSetData, Req: &jute.SetDataRequest{Path: path, Data: body, Version: r.Version}})
		call := c.GoMulti(ops)
		select {
		case <-call.Done:
		case <-ctx.Done():
			return Record{}, nil, fmt.Errorf("raise %s to epoch %d: %w", path, epoch, ctx.Err())
		}
		i, err := zkclient.MultiErr(call)
		switch {
		case err == nil:
			res := call.Resp.(*jute.MultiResponse).Results[len(markers)]
			var v int32
			if st, ok := res.Resp.(*jute.SetDataResponse); ok {
				v = st.Stat.Version
			} else {
				v = r.Version + 1
			}
			return Record{Epoch: epoch, Primary: primary, Version: v}, nil, nil
		case i == len(markers) && jute.CodeOf(err) == jute.CodeBadVersion:
			continue // raised meanwhile: read again
		case i >= 0 && i < len(markers):
			lapsed, lerr := changedMarkers(ctx, c, markers)
			if lerr != nil {
				return Record{}, nil, fmt.Errorf("raise %s to epoch %d: a hold marker changed; read them: %w", path, epoch, lerr)
			}
			if len(lapsed) == 0 {
				lapsed = []int{i}
			}
			return r, lapsed, nil
		default:
			return Record{}, nil, fmt.Errorf("raise %s to epoch %d: %w", path, epoch, err)
		}
	}
}

// changedMarkers returns the indexes of the markers whose version is not
// the one recorded (or that are gone).
func changedMarkers(ctx context.Context, c *zkclient.Conn, markers []Marker) ([]int, error) {
	var out []int
	for i, m := range markers {
		st, err := c.Exists(ctx, m.Path)
		switch {
		case jute.CodeOf(err) == jute.CodeNoNode:
			out = append(out, i)
		case err != nil:
			return nil, fmt.Errorf("%s: %w", m.Path, err)
		case st.Version != m.Version:
			out = append(out, i)
		}
	}
	return out, nil
}

// Resume is what a proxy whose hold ran out does before it lets its
// clients' requests go on to the old primary: it bumps its marker on the
// condition that the fence is still below epoch. resumed is false, with
// the fence's record, when the fence already records epoch or later: the
// flip committed, and the proxy must move its sessions instead.
func Resume(ctx context.Context, c *zkclient.Conn, path, marker string, epoch int64) (rec Record, resumed bool, err error) {
	for {
		r, err := ReadExisting(ctx, c, path)
		if err != nil {
			return Record{}, false, err
		}
		if r.Epoch >= epoch {
			return r, false, nil
		}
		call := c.GoMulti([]zkclient.MultiOp{
			{Op: jute.OpCheck, Req: &jute.CheckVersionRequest{Path: path, Version: r.Version}},
			{Op: jute.OpSetData, Req: &jute.SetDataRequest{Path: marker, Version: -1}},
		})
		select {
		case <-call.Done:
		case <-ctx.Done():
			return Record{}, false, fmt.Errorf("bump the hold marker %s: %w", marker, ctx.Err())
		}
		i, err := zkclient.MultiErr(call)
		switch {
		case err == nil:
			return r, true, nil
		case i == 0 && jute.CodeOf(err) == jute.CodeBadVersion:
			continue // the fence moved: read it again
		default:
			return Record{}, false, fmt.Errorf("bump the hold marker %s: %w", marker, err)
		}
	}
}
