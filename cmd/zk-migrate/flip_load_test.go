package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/history"
	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// The load of the flip scenario: writers recording a register history,
// readers holding watches on the Mesos leader, and a sampler asking every
// master who leads.

// regWriter is one application client of a proxy doing versioned setData,
// delete and create on the shared registers, recorded in a history, and
// unique creates whose acknowledgement it remembers.
type regWriter struct {
	id      int
	conn    *zk.Conn
	events  <-chan zk.Event
	via     string
	regs    []string
	rec     *history.Recorder
	acked   []string // unique znodes whose create was acknowledged
	noticed []string // errors and session states a user would see
	// tolerateLoss: the writer's proxy is killed on purpose, so a lost
	// connection (and a write of unknown outcome) is expected; an expired
	// session never is.
	tolerateLoss atomic.Bool
	mu           sync.Mutex
}

// writePause is each writer's pause between operations.
const writePause = 15 * time.Millisecond

// outcome classifies a write's answer for the history; ok reports whether
// the answer is one a concurrent workload expects.
func outcome(err error) (history.Code, bool) {
	switch {
	case err == nil:
		return history.OK, true
	case errors.Is(err, zk.ErrBadVersion):
		return history.BadVersion, true
	case errors.Is(err, zk.ErrNoNode):
		return history.NoNode, true
	case errors.Is(err, zk.ErrNodeExists):
		return history.NodeExists, true
	}
	return history.Unknown, false
}

func (w *regWriter) notice(format string, args ...any) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.noticed) < 20 {
		w.noticed = append(w.noticed, fmt.Sprintf("%s writer %d via %s: ", time.Now().Format("15:04:05.000"), w.id, w.via)+fmt.Sprintf(format, args...))
	}
}

// unexpected reports whether err is one the writer must notice.
func (w *regWriter) unexpected(err error) bool {
	if errors.Is(err, zk.ErrSessionExpired) {
		return true
	}
	return !w.tolerateLoss.Load()
}

// run writes until stop closes.
func (w *regWriter) run(stop <-chan struct{}) {
	acl := zk.WorldACL(zk.PermAll)
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		case ev := <-w.events:
			if ev.State == zk.StateExpired || ev.State == zk.StateAuthFailed || ev.State == zk.StateDisconnected && !w.tolerateLoss.Load() {
				w.notice("session event %v", ev.State)
			}
			continue
		default:
		}
		reg := w.regs[rand.IntN(len(w.regs))]
		data := fmt.Sprintf("w%d-%d", w.id, i)
		record := func(in history.Input, write func() (int32, error)) {
			op := w.rec.Begin(w.id+1, in)
			v, err := write()
			code, ok := outcome(err)
			op.End(history.Output{Code: code, Version: v})
			if !ok && w.unexpected(err) {
				w.notice("%s %s: %v", in.Kind, in.Path, err)
			}
		}
		switch r := rand.IntN(50); {
		case r < 25, r < 33: // a versioned write, or a delete, with the version read
			_, st, err := w.conn.Get(reg)
			if errors.Is(err, zk.ErrNoNode) {
				record(history.Input{Kind: history.Create, Path: reg, Data: data}, func() (int32, error) {
					_, err := w.conn.Create(reg, []byte(data), 0, acl)
					return 0, err
				})
				break
			}
			if err != nil {
				if w.unexpected(err) {
					w.notice("get %s: %v", reg, err)
				}
				break
			}
			if r < 25 {
				record(history.Input{Kind: history.Set, Path: reg, Data: data, Version: st.Version}, func() (int32, error) {
					st, err := w.conn.Set(reg, []byte(data), st.Version)
					if err != nil {
						return 0, err
					}
					return st.Version, nil
				})
			} else {
				record(history.Input{Kind: history.Delete, Path: reg, Version: st.Version}, func() (int32, error) {
					return 0, w.conn.Delete(reg, st.Version)
				})
			}
		case r < 49: // a blind write
			record(history.Input{Kind: history.Set, Path: reg, Data: data, Version: -1}, func() (int32, error) {
				st, err := w.conn.Set(reg, []byte(data), -1)
				if err != nil {
					return 0, err
				}
				return st.Version, nil
			})
		default: // a unique znode that must survive every flip
			p := fmt.Sprintf("/reg/acks/w%d-%05d", w.id, i)
			if _, err := w.conn.Create(p, []byte(data), 0, acl); err == nil {
				w.mu.Lock()
				w.acked = append(w.acked, p)
				w.mu.Unlock()
			} else if w.unexpected(err) {
				w.notice("create %s: %v", p, err)
			}
		}
		// A few hundred writes a second in all: the replicator and the
		// flip guard's digest reads share two cores with six servers.
		time.Sleep(writePause)
	}
}

// watchCount is what one reader's watches delivered.
type watchCount struct {
	deleted, children, persistent int
}

// leaderReader holds, through a proxy, a data watch on the leading
// master's json.info_ node and a child watch on /mesos (one session), and
// a persistent watch on /mesos (another session, since ZooKeeper sends one
// event per connection when two watches of one connection match).
type leaderReader struct {
	id      int
	w, p    *zkclient.Conn
	mu      sync.Mutex
	leader  string // the json.info_ node it watches
	counts  watchCount
	events  []string // every event, for the log
	noticed []string
}

func dialReader(ctx context.Context, id int, addr string, timeout time.Duration) (*leaderReader, error) {
	r := &leaderReader{id: id}
	var err error
	if r.w, err = zkclient.Dial(ctx, []string{addr}, zkclient.Options{SessionTimeout: timeout}); err != nil {
		return nil, err
	}
	if r.p, err = zkclient.Dial(ctx, []string{addr}, zkclient.Options{SessionTimeout: timeout}); err != nil {
		r.w.Close()
		return nil, err
	}
	if err := r.p.AddWatch(ctx, "/mesos", false); err != nil {
		r.close()
		return nil, fmt.Errorf("addWatch: %w", err)
	}
	if err := r.arm(ctx); err != nil {
		r.close()
		return nil, err
	}
	return r, nil
}

func (r *leaderReader) close() { _ = r.w.Close(); _ = r.p.Close() }

// arm sets the child watch on /mesos and the data watch on the lowest
// json.info_ child.
func (r *leaderReader) arm(ctx context.Context) error {
	var kids jute.GetChildren2Response
	if err := r.w.Do(ctx, jute.OpGetChildren2, &jute.GetChildren2Request{Path: "/mesos", Watch: true}, &kids); err != nil {
		return fmt.Errorf("getChildren /mesos: %w", err)
	}
	lowest := lowestInfo(kids.Children)
	if lowest == "" {
		return errors.New("no json.info_ under /mesos")
	}
	var st jute.ExistsResponse
	err := r.w.Do(ctx, jute.OpExists, &jute.ExistsRequest{Path: "/mesos/" + lowest, Watch: true}, &st)
	if err != nil && jute.CodeOf(err) != jute.CodeNoNode {
		return fmt.Errorf("exists: %w", err)
	}
	r.mu.Lock()
	r.leader = "/mesos/" + lowest
	r.mu.Unlock()
	return nil
}

// lowestInfo returns the json.info_ child with the lowest sequence.
func lowestInfo(kids []string) string {
	var infos []string
	for _, k := range kids {
		if strings.HasPrefix(k, "json.info_") {
			infos = append(infos, k)
		}
	}
	sort.Slice(infos, func(i, j int) bool { return infos[i][len(infos[i])-10:] < infos[j][len(infos[j])-10:] })
	if len(infos) == 0 {
		return ""
	}
	return infos[0]
}

// run counts events and re-arms until stop closes.
func (r *leaderReader) run(stop <-chan struct{}) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	note := func(s string) {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.noticed = append(r.noticed, fmt.Sprintf("reader %d: %s", r.id, s))
	}
	for {
		select {
		case <-stop:
			return
		case <-r.w.Done():
			note(fmt.Sprintf("watch session ended: %v", r.w.Err()))
			return
		case <-r.p.Done():
			note(fmt.Sprintf("persistent watch session ended: %v", r.p.Err()))
			return
		case ev, ok := <-r.p.Events():
			if !ok {
				continue
			}
			r.mu.Lock()
			r.events = append(r.events, fmt.Sprintf("%s persistent %d %s", time.Now().Format("15:04:05.000"), ev.Type, ev.Path))
			if ev.Type == jute.EventNodeChildrenChanged && ev.Path == "/mesos" {
				r.counts.persistent++
			}
			r.mu.Unlock()
		case ev, ok := <-r.w.Events():
			if !ok {
				continue
			}
			r.mu.Lock()
			r.events = append(r.events, fmt.Sprintf("%s watch %d %s", time.Now().Format("15:04:05.000"), ev.Type, ev.Path))
			switch {
			case ev.Type == jute.EventNodeDeleted && ev.Path == r.leader:
				r.counts.deleted++
			case ev.Type == jute.EventNodeChildrenChanged && ev.Path == "/mesos":
				r.counts.children++
			}
			r.mu.Unlock()
			actx, acancel := context.WithTimeout(ctx, 10*time.Second)
			if err := r.arm(actx); err != nil {
				note(fmt.Sprintf("re-arm after %d %s: %v", ev.Type, ev.Path, err))
			}
			acancel()
		}
	}
}

func (r *leaderReader) snapshot() (watchCount, []string, string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.counts, append([]string(nil), r.noticed...), r.leader
}

// leaderSampler asks every master who leads, continuously: the leader
// answers /master/state with 200, the others 307 to it.
type leaderSampler struct {
	urls    []string
	alive   func(i int) bool
	samples atomic.Int64
	mu      sync.Mutex
	leaders map[int]int // leader index -> samples in which it alone led
	bad     []string    // samples with two leaders or disagreeing followers
}

func (s *leaderSampler) run(stop <-chan struct{}) {
	client := &http.Client{Timeout: 2 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	s.leaders = map[int]int{}
	for {
		select {
		case <-stop:
			return
		case <-time.After(25 * time.Millisecond):
		}
		var lead []int
		targets := map[string]bool{}
		for i, u := range s.urls {
			if !s.alive(i) {
				continue
			}
			resp, err := client.Get(u + "/master/state")
			if err != nil {
				continue // a busy machine: no answer is no vote
			}
			resp.Body.Close()
			switch resp.StatusCode {
			case http.StatusOK:
				lead = append(lead, i)
			case http.StatusTemporaryRedirect:
				targets[strings.TrimSuffix(resp.Header.Get("Location"), "/master/state")] = true
			}
		}
		s.samples.Add(1)
		s.mu.Lock()
		switch {
		case len(lead) > 1:
			s.bad = append(s.bad, fmt.Sprintf("%s: masters %v lead at once", time.Now().Format("15:04:05.000"), lead))
		case len(targets) > 1:
			s.bad = append(s.bad, fmt.Sprintf("%s: followers redirect to %v", time.Now().Format("15:04:05.000"), targets))
		case len(lead) == 1:
			if len(targets) == 1 && !targets[s.urls[lead[0]]] {
				s.bad = append(s.bad, fmt.Sprintf("%s: master %d leads, followers redirect to %v", time.Now().Format("15:04:05.000"), lead[0], targets))
			}
			s.leaders[lead[0]]++
		}
		s.mu.Unlock()
	}
}

func (s *leaderSampler) result() (map[int]int, []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[int]int{}
	for k, v := range s.leaders {
		out[k] = v
	}
	return out, append([]string(nil), s.bad...)
}
