package proxy

import (
	"sort"

	"github.com/zk-migrate/zk-migrate/jute"
)

// trackKind says what a successful reply teaches the proxy about the
// session's watches or credentials.
type trackKind uint8

const (
	trackNone          trackKind = iota
	trackData                    // getData with watch
	trackExists                  // exists with watch: data watch if found, exist watch if not
	trackChild                   // getChildren(2) with watch
	trackAddWatch                // addWatch: arg is the mode
	trackSetWatches              // client's own setWatches(2): arg is the request
	trackRemoveWatches           // removeWatches: arg is the watcher type
	trackAuth                    // addAuth: arg is the packet, replayed on reattach
	trackSASL                    // SASL: the session cannot be reattached transparently
	trackClose                   // closeSession: the upstream will hang up
)

// watchSet is the set of watches a session holds on the server, kept so the
// proxy can re-register them (SetWatches/SetWatches2) on another server
// after the one it was attached to dies. It errs towards keeping a watch: a
// re-registered watch the client no longer wants at worst fires an event the
// client ignores; a lost watch would never fire.
type watchSet struct {
	data, exist, child, persistent, recursive map[string]struct{}
}

func newWatchSet() *watchSet {
	return &watchSet{
		data: map[string]struct{}{}, exist: map[string]struct{}{}, child: map[string]struct{}{},
		persistent: map[string]struct{}{}, recursive: map[string]struct{}{},
	}
}

func addAll(m map[string]struct{}, paths []string) {
	for _, p := range paths {
		m[p] = struct{}{}
	}
}

// learn updates the set from a successful (or, for exists, NONODE) reply.
func (w *watchSet) learn(p *pending, code jute.Code) {
	switch p.track {
	case trackData:
		if code == jute.CodeOK {
			w.data[p.path] = struct{}{}
		}
	case trackExists:
		switch code {
		case jute.CodeOK:
			w.data[p.path] = struct{}{}
		case jute.CodeNoNode:
			w.exist[p.path] = struct{}{}
		}
	case trackChild:
		if code == jute.CodeOK {
			w.child[p.path] = struct{}{}
		}
	case trackAddWatch:
		if code == jute.CodeOK {
			if p.arg.(int32) == jute.AddWatchPersistentRecursive {
				w.recursive[p.path] = struct{}{}
			} else {
				w.persistent[p.path] = struct{}{}
			}
		}
	case trackSetWatches:
		if code != jute.CodeOK {
			return
		}
		switch r := p.arg.(type) {
		case *jute.SetWatches:
			addAll(w.data, r.DataWatches)
			addAll(w.exist, r.ExistWatches)
			addAll(w.child, r.ChildWatches)
		case *jute.SetWatches2:
			addAll(w.data, r.DataWatches)
			addAll(w.exist, r.ExistWatches)
			addAll(w.child, r.ChildWatches)
			addAll(w.persistent, r.PersistentWatches)
			addAll(w.recursive, r.PersistentRecursiveWatches)
		}
	case trackRemoveWatches:
		if code != jute.CodeOK {
			return
		}
		switch p.arg.(int32) {
		case jute.WatcherChildren:
			delete(w.child, p.path)
		case jute.WatcherData:
			delete(w.data, p.path)
			delete(w.exist, p.path)
		default:
			delete(w.child, p.path)
			delete(w.data, p.path)
			delete(w.exist, p.path)
			delete(w.persistent, p.path)
			delete(w.recursive, p.path)
		}
	}
}

// fired removes the one-shot watches an event consumed. Persistent watches
// stay, as they do on the server.
func (w *watchSet) fired(ev *jute.WatcherEvent) {
	switch ev.Type {
	case jute.EventNodeCreated, jute.EventNodeDataChanged:
		delete(w.data, ev.Path)
		delete(w.exist, ev.Path)
	case jute.EventNodeDeleted:
		delete(w.data, ev.Path)
		delete(w.exist, ev.Path)
		delete(w.child, ev.Path)
	case jute.EventNodeChildrenChanged:
		delete(w.child, ev.Path)
	}
}

func (w *watchSet) empty() bool {
	return len(w.data)+len(w.exist)+len(w.child)+len(w.persistent)+len(w.recursive) == 0
}

func sortedKeys(m map[string]struct{}) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// setWatchesBatchBytes bounds the paths of one SetWatches frame, as
// ZooKeeper's own client does (SET_WATCHES_MAX_LENGTH, 128 KB), so a session
// with many watches never sends a frame above jute.maxbuffer.
const setWatchesBatchBytes = 128 * 1024

// replay returns the SetWatches2 records (or SetWatches, when the session
// has no persistent watches, so 3.5 servers understand them) that
// re-register every watch with the server, relative to zxid.
func (w *watchSet) replay(zxid int64) []jute.Record {
	type list struct {
		paths []string
		dst   func(*jute.SetWatches2) *[]string
	}
	lists := []list{
		{sortedKeys(w.data), func(r *jute.SetWatches2) *[]string { return &r.DataWatches }},
		{sortedKeys(w.exist), func(r *jute.SetWatches2) *[]string { return &r.ExistWatches }},
		{sortedKeys(w.child), func(r *jute.SetWatches2) *[]string { return &r.ChildWatches }},
		{sortedKeys(w.persistent), func(r *jute.SetWatches2) *[]string { return &r.PersistentWatches }},
		{sortedKeys(w.recursive), func(r *jute.SetWatches2) *[]string { return &r.PersistentRecursiveWatches }},
	}
	v2 := len(w.persistent)+len(w.recursive) > 0
	var out []*jute.SetWatches2
	cur := &jute.SetWatches2{RelativeZxid: zxid}
	size := 0
	for _, l := range lists {
		for _, p := range l.paths {
			if size > 0 && size+len(p) > setWatchesBatchBytes {
				out = append(out, cur)
				cur, size = &jute.SetWatches2{RelativeZxid: zxid}, 0
			}
			dst := l.dst(cur)
			*dst = append(*dst, p)
			size += len(p) + 4
		}
	}
	if size > 0 {
		out = append(out, cur)
	}
	recs := make([]jute.Record, 0, len(out))
	for _, r := range out {
		if v2 {
			recs = append(recs, withEmptyLists(r))
			continue
		}
		recs = append(recs, &jute.SetWatches{RelativeZxid: r.RelativeZxid,
			DataWatches: nonNil(r.DataWatches), ExistWatches: nonNil(r.ExistWatches), ChildWatches: nonNil(r.ChildWatches)})
	}
	return recs
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// withEmptyLists replaces nil lists by empty ones: servers read a null
// vector as null and some versions do not expect it here.
func withEmptyLists(r *jute.SetWatches2) *jute.SetWatches2 {
	r.DataWatches, r.ExistWatches, r.ChildWatches = nonNil(r.DataWatches), nonNil(r.ExistWatches), nonNil(r.ChildWatches)
	r.PersistentWatches, r.PersistentRecursiveWatches = nonNil(r.PersistentWatches), nonNil(r.PersistentRecursiveWatches)
	return r
}
