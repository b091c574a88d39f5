package proxy

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/fence"
	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// What a swap reads, in one round trip per ensemble when it can (SPEC.md
// 4.10, 6): on each of oc and nc, pipelined, a sync, the fence and the
// stat of every path shown to a client. ZooKeeper serves one session's
// requests in order, so the reads see everything the leader had committed
// when the sync reached it: the state after the drain. When the fences
// record the flip's epoch already (the control plane raised them, or
// another proxy of a one-shot flip did), that is all; otherwise the fences
// are raised (old primary first) and the versions read again.

// sideRead is what one ensemble showed.
type sideRead struct {
	rec   fence.Record
	ok    bool  // the fence exists and holds a record
	mzxid int64 // the fence's last change (its raise)
	stats []statRead
	err   error
}

// readSide sends a sync, a read of the fence and a stat of every path on
// c, pipelined, and collects the answers.
func (s *Server) readSide(ctx context.Context, c *zkclient.Conn, paths []string) sideRead {
	sc := c.Go(jute.OpSync, &jute.SyncRequest{Path: "/"}, &jute.SyncResponse{})
	var fr jute.GetDataResponse
	fc := c.Go(jute.OpGetData, &jute.GetDataRequest{Path: s.cfg.FencePath}, &fr)
	stats, err := readStats(ctx, c, paths)
	if err != nil {
		return sideRead{err: err}
	}
	for _, call := range []*zkclient.Call{sc, fc} {
		select {
		case <-call.Done:
		case <-ctx.Done():
			return sideRead{err: fmt.Errorf("sync and read the fence: %w", ctx.Err())}
		}
	}
	if sc.Err != nil {
		return sideRead{err: fmt.Errorf("sync: %w", sc.Err)}
	}
	if fc.Err != nil || len(fr.Data) == 0 {
		return sideRead{stats: stats} // missing, or never raised: the slow path
	}
	var rec fence.Record
	if json.Unmarshal(fr.Data, &rec) != nil {
		return sideRead{stats: stats} // the slow path says what is wrong
	}
	rec.Version = fr.Stat.Version
	return sideRead{rec: rec, ok: true, mzxid: fr.Stat.Mzxid, stats: stats}
}

// readForSwap learns the fences' versions for a swap to primary at epoch
// and puts the version offsets of the flip in force (a peer's, where peer
// has them: rebase); sent is the
// monotonic time before the fences were read. converge (a swap under the
// control plane's barrier, every live proxy held) first makes the new
// primary like the old for paths shown to clients that exist on one side
// only (flip_converge.go).
func (s *Server) readForSwap(ctx context.Context, cur *roles, oc, nc *zkclient.Conn, epoch int64, primary ensemble.Name, peer map[string]PathOffset, converge bool) (vers [2]int32, sent int64, err error) {
	paths, prev := s.view.shown()
	sent = s.mono()
	var o, n sideRead
	done := make(chan struct{})
	go func() {
		defer close(done)
		o = s.readSide(ctx, oc, paths)
	}()
	n = s.readSide(ctx, nc, paths)
	<-done
	if err := firstErr(o.err, n.err); err != nil {
		return vers, 0, err
	}
	if !o.ok || !n.ok || o.rec.Epoch < epoch || n.rec.Epoch < epoch {
		// Not raised yet on one of them: raise them (old primary first),
		// then read the versions again after the raise.
		s.log.Debug("flip: the fences do not record the epoch yet; raising them", "epoch", epoch)
		if vers, err = s.raiseFences(ctx, cur, oc, nc, epoch, primary); err != nil {
			return vers, 0, err
		}
		sent = s.mono()
		if err := s.rebase(ctx, oc, nc, peer); err != nil {
			return vers, 0, err
		}
		return vers, sent, nil
	}
	for _, side := range []struct {
		name ensemble.Name
		rec  fence.Record
	}{{cur.primary, o.rec}, {cur.primary.Other(), n.rec}} {
		if side.rec.Epoch > epoch {
			return vers, 0, fmt.Errorf("%w: the fence of %s records epoch %d, asked %d", ErrStaleEpoch, side.name.Flag(), side.rec.Epoch, epoch)
		}
	}
	if converge {
		s.convergeForSwap(ctx, oc, nc, paths, o.stats, n.stats, n.rec.Version, n.mzxid)
	}
	next, err := rebased(paths, prev, o.stats, n.stats, peer)
	if err != nil {
		return vers, 0, err
	}
	if !converge && peer == nil {
		// A flip after the barrier (caught up late, no agreed peer): a
		// znode created on the new primary since its fence was raised is
		// shown by its own versions through every proxy that swapped in
		// the barrier (an offset belongs to the incarnation it was read
		// for); its own reading would be the copies' drift, the mirror
		// lagging behind the new primary's clients.
		for i, p := range paths {
			if n.stats[i].err == nil && n.stats[i].st.Czxid > n.mzxid {
				delete(next, p)
			}
		}
	}
	s.view.rebaseTo(next, peer)
	vers[cur.primary.Index()], vers[cur.primary.Other().Index()] = o.rec.Version, n.rec.Version
	return vers, sent, nil
}
