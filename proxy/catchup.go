package proxy

import (
	"context"
	"path"
	"time"

	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// Persistent watches come back from SetWatches2 without catch-up: unlike
// one-shot watches, ZooKeeper fires nothing for changes made since the
// relative zxid. catchUp makes up for it after a re-attach. It reads the
// watched paths (the whole subtree for recursive watches) and sends the
// client the events of changes with a zxid in (from, to], where to is the
// zxid at which the server re-registered the watches. Later changes are
// the server's to report, so nothing is reported twice. A deletion leaves
// no trace to read and is not recovered.

// maxCatchUpNodes bounds the subtree a recursive catch-up walks.
const maxCatchUpNodes = 100000

func (s *session) catchUp(persistent, recursive []string, from int64, registered <-chan int64) {
	var to int64
	select {
	case to = <-registered:
	case <-s.done:
		return
	case <-time.After(s.timeout):
		s.log.Warn("persistent-watch catch-up skipped: the watches were not re-registered in time")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	go func() {
		select {
		case <-s.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	var auth []zkclient.Auth
	s.omu.Lock()
	for _, a := range s.auths {
		auth = append(auth, zkclient.Auth{Scheme: a.Scheme, Secret: a.Auth})
	}
	s.omu.Unlock()
	c, err := zkclient.Dial(ctx, s.serving().addrs, zkclient.Options{Auth: auth, Dial: s.srv.cfg.Dial, DialTimeout: s.srv.cfg.DialTimeout})
	if err != nil {
		s.log.Warn("persistent-watch catch-up: cannot connect", "err", err)
		return
	}
	defer c.Close()
	if err := c.Sync(ctx, "/"); err != nil {
		return
	}
	changed := func(z int64) bool { return z > from && z <= to }
	var events []jute.WatcherEvent
	emit := func(typ int32, p string) {
		events = append(events, jute.WatcherEvent{Type: typ, State: jute.StateSyncConnected, Path: p})
	}
	// emitNode reports a node created or changed in the window.
	emitNode := func(p string, st jute.Stat) {
		switch {
		case changed(st.Czxid):
			emit(jute.EventNodeCreated, p)
		case changed(st.Mzxid):
			emit(jute.EventNodeDataChanged, p)
		}
	}
	for _, p := range persistent {
		_, st, err := c.Children(ctx, p)
		if err != nil {
			continue
		}
		emitNode(p, st)
		if changed(st.Pzxid) {
			emit(jute.EventNodeChildrenChanged, p)
		}
	}
	walked := 0
	for _, root := range recursive {
		queue := []string{root}
		for len(queue) > 0 && walked < maxCatchUpNodes && ctx.Err() == nil {
			p := queue[0]
			queue = queue[1:]
			walked++
			kids, st, err := c.Children(ctx, p)
			if err != nil {
				continue
			}
			emitNode(p, st)
			// A data change below does not show in an ancestor's stat:
			// walk the whole subtree.
			for _, k := range kids {
				queue = append(queue, path.Join(p, k))
			}
		}
	}
	if len(events) == 0 {
		return
	}
	s.omu.Lock()
	defer s.omu.Unlock()
	for i := range events {
		var e jute.Encoder
		h := jute.ReplyHeader{Xid: jute.XidWatchEvent, Zxid: -1}
		h.Encode(&e)
		events[i].Encode(&e)
		s.writeClientLocked(e.Bytes(), false)
		s.srv.m.events.Inc()
	}
	s.out.flush()
	s.log.Info("persistent watches caught up after the move", "events", len(events))
}
