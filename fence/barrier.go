package fence

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// The barrier announces itself (SPEC.md 4.10, "A proxy the barrier did not
// hold"). Before the control plane asks the first proxy to hold for a flip,
// it writes the announcement, a child of the old primary's fence znode
// beside the hold markers (BarrierPath), naming the flip's epoch and new
// primary. It withdraws it (Withdraw) when the barrier ends: once it has
// released the proxies, after their swaps (the flip is done) or without
// a flip (aborted, or released to hold again). A proxy at an older epoch
// that reads the announcement on its primary (at start, before it
// serves, and at every lease renewal) and holds for no barrier holds
// itself as if the control plane had asked it, so a proxy restarted
// inside the barrier (or one the control plane did not know) never
// serves writes on the old primary while its peers hold. It swaps once
// the fence records the epoch, and resumes once the announcement is
// gone: with its peers, whose versions it then agrees with.
//
// Each write of the announcement is a round (its mzxid): a proxy holds
// itself at most once per round, for its pause budget, like a hold the
// control plane asked for. A control leader that dies leaves the
// announcement behind; its successor announces again (a new round) when
// it holds the proxies again, and a barrier nobody resumes costs each
// proxy one budget's pause, never more. No wall-clock deadline: the
// control plane's and the proxies' clocks need not agree.

// BarrierPath is the announcement of an open barrier under the fence at
// path.
func BarrierPath(path string) string { return path + "/barrier" }

// Barrier is an open barrier's announcement.
type Barrier struct {
	Epoch   int64         `json:"epoch"`
	Primary ensemble.Name `json:"primary"`
	// Round identifies this write of the announcement (the znode's
	// mzxid): a proxy holds itself once per round.
	Round   int64 `json:"-"`
	Version int32 `json:"-"`
}

// Announce writes the announcement of a barrier at epoch towards primary
// under the fence at path on c's ensemble (the old primary), creating the
// fence znode if needed, and returns it.
func Announce(ctx context.Context, c *zkclient.Conn, path string, epoch int64, primary ensemble.Name) (Barrier, error) {
	body, _ := json.Marshal(Barrier{Epoch: epoch, Primary: primary})
	bp := BarrierPath(path)
	for {
		st, err := c.Set(ctx, bp, body, -1)
		if jute.CodeOf(err) == jute.CodeNoNode {
			_, err = c.Create(ctx, bp, body, zkclient.OpenACL, 0)
			switch jute.CodeOf(err) {
			case jute.CodeNodeExists:
				continue
			case jute.CodeNoNode: // no fence znode yet
				if _, err := Read(ctx, c, path); err != nil {
					return Barrier{}, fmt.Errorf("announce the barrier at epoch %d: %w", epoch, err)
				}
				continue
			}
			if err == nil {
				st, err = c.Exists(ctx, bp)
			}
		}
		if err != nil {
			return Barrier{}, fmt.Errorf("announce the barrier at epoch %d (%s): %w", epoch, bp, err)
		}
		return Barrier{Epoch: epoch, Primary: primary, Round: st.Mzxid, Version: st.Version}, nil
	}
}

// ReadBarrier reads the announcement under the fence at path (ok false
// when no barrier is announced).
func ReadBarrier(ctx context.Context, c *zkclient.Conn, path string) (b Barrier, ok bool, err error) {
	data, st, err := c.Get(ctx, BarrierPath(path))
	if jute.CodeOf(err) == jute.CodeNoNode {
		return Barrier{}, false, nil
	}
	if err != nil {
		return Barrier{}, false, fmt.Errorf("read the barrier's announcement %s: %w", BarrierPath(path), err)
	}
	if err := json.Unmarshal(data, &b); err != nil {
		return Barrier{}, false, fmt.Errorf("%s holds %q, not a barrier's announcement: %w", BarrierPath(path), data, err)
	}
	b.Round, b.Version = st.Mzxid, st.Version
	return b, true, nil
}

// Withdraw deletes the announcement of the barrier at epoch (one of
// another epoch is left alone): the holds are released without a flip.
func Withdraw(ctx context.Context, c *zkclient.Conn, path string, epoch int64) error {
	for {
		b, ok, err := ReadBarrier(ctx, c, path)
		if err != nil || !ok || b.Epoch != epoch {
			return err
		}
		err = c.Delete(ctx, BarrierPath(path), b.Version)
		switch jute.CodeOf(err) {
		case jute.CodeBadVersion:
			continue // announced again meanwhile
		case jute.CodeNoNode:
			return nil
		}
		if err != nil {
			return fmt.Errorf("withdraw the barrier's announcement at epoch %d: %w", epoch, err)
		}
		return nil
	}
}
