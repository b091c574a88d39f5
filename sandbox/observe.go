package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/deployer"
)

// leaderWatch asks every master, every 100 ms, who leads (GET
// /master/state without following redirects: the leader answers 200, the
// others 307): it records each change of leader with the step the
// migration was in, and every instant at which two masters answered as
// leader. Its goroutine is owned by run's caller (ended by ctx).
type leaderWatch struct {
	masters []deployer.Process
	dep     *deployer.Local
	step    *atomic.Value // the step the demo is in (string)

	mu      sync.Mutex
	current string
	changes []*leaderChange
	doubles []string // "[m1 m2] at T" for every second sample in a row with two leaders
	twoLast bool     // the previous sample had two leaders
	samples int
	checks  sync.WaitGroup // goroutines deciding whether a change was planned
}

// leaderChange is one change of the leading master.
type leaderChange struct {
	At       time.Time
	From, To string
	Step     string
	// Planned: the old leader was stopped by the control plane in a
	// phase that moves masters (3, or the undo of 2 and 3 in a rollback):
	// the one leadership move the migration makes on purpose.
	Planned bool
}

func (w *leaderWatch) run(ctx context.Context) {
	defer w.checks.Wait()
	hc := &http.Client{Timeout: 500 * time.Millisecond,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var leaders []string
		var mu sync.Mutex
		var wg sync.WaitGroup
		for _, m := range w.masters {
			wg.Add(1)
			go func() {
				defer wg.Done()
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, m.URL()+"/master/state", nil)
				resp, err := hc.Do(req)
				if err != nil {
					return
				}
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					mu.Lock()
					leaders = append(leaders, m.Name)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		sort.Strings(leaders)
		w.note(ctx, leaders)
	}
}

func (w *leaderWatch) note(ctx context.Context, leaders []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.samples++
	if len(leaders) > 1 {
		// A leader that was stopped may answer for a moment after its
		// successor recovered (it closes its sessions, then exits): two
		// samples in a row (100 ms apart) count.
		if w.twoLast {
			w.doubles = append(w.doubles, fmt.Sprintf("%v at %s", leaders, time.Now().Format("15:04:05.000")))
		}
		w.twoLast = true
		return
	}
	w.twoLast = false
	if len(leaders) == 0 || leaders[0] == w.current {
		return
	}
	if w.current != "" {
		step, _ := w.step.Load().(string)
		c := &leaderChange{At: time.Now(), From: w.current, To: leaders[0], Step: step}
		w.changes = append(w.changes, c)
		if step == "3-masters-off-a" || step == "rollback" {
			// Planned if the control plane stopped the old leader: its
			// process is gone within 20 s (SIGTERM, then the exit).
			var old deployer.Process
			for _, m := range w.masters {
				if m.Name == w.current {
					old = m
				}
			}
			w.checks.Add(1)
			go func() {
				defer w.checks.Done()
				// Not ctx: the watch may be stopping; this ends within 20 s.
				bg := context.Background()
				gone := waitUntil(bg, 20*time.Second, "the old leader's exit", func() bool {
					running, _ := w.dep.Running(bg, old)
					return !running
				}) == nil
				w.mu.Lock()
				c.Planned = gone
				w.mu.Unlock()
			}()
		}
	}
	w.current = leaders[0]
}

// leader returns the master leading now ("" before the first sample).
func (w *leaderWatch) leader() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.current
}

// result is the changes, the double-leader samples and the sample count;
// call it after run has returned.
func (w *leaderWatch) result() ([]leaderChange, []string, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	var cs []leaderChange
	for _, c := range w.changes {
		cs = append(cs, *c)
	}
	return cs, append([]string(nil), w.doubles...), w.samples
}

// frameworkState is what the emulated framework reports (GET /state).
type frameworkState struct {
	Subscribed     bool           `json:"subscribed"`
	Active         map[string]int `json:"active"`
	Launched       int            `json:"launched"`
	KilledByUs     int            `json:"killed_by_us"`
	KilledByOthers int            `json:"killed_by_others"`
	Failed         int            `json:"failed"`
}

func readFramework(ctx context.Context, url string) (frameworkState, error) {
	var s frameworkState
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/state", nil)
	if err != nil {
		return s, err
	}
	resp, err := (&http.Client{Timeout: 2 * time.Second}).Do(req)
	if err != nil {
		return s, fmt.Errorf("sandbox: framework state: %w", err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return s, fmt.Errorf("sandbox: framework state: %w", err)
	}
	return s, nil
}

// probe is a client of one proxy writing a counter znode as fast as it is
// acknowledged: every acknowledged value must be there at the end, and the
// longest write it saw (the flip's pause, from a client's side) is
// measured. Its session's state changes are counted: an expiry must not
// happen, a disconnection should not.
type probe struct {
	conn *zk.Conn
	path string

	acked       atomic.Int64
	writes      atomic.Int64
	errs        atomic.Int64
	connLoss    atomic.Int64
	expired     atomic.Int64
	disconnects atomic.Int64
	mu          sync.Mutex
	slowest     time.Duration
	slowestAt   time.Time
	firstErr    error
}

// quietLogger drops go-zookeeper's log lines: the demo's output is its own.
type quietLogger struct{}

func (quietLogger) Printf(string, ...any) {}

func startProbe(ctx context.Context, addr, path string) (*probe, error) {
	conn, ev, err := zk.Connect([]string{addr}, 10*time.Second, zk.WithLogInfo(false), zk.WithLogger(quietLogger{}))
	if err != nil {
		return nil, fmt.Errorf("sandbox: probe: %w", err)
	}
	p := &probe{conn: conn, path: path}
	go func() { // ends when conn is closed (ev is closed)
		for e := range ev {
			switch e.State {
			case zk.StateExpired:
				p.expired.Add(1)
			case zk.StateDisconnected:
				if ctx.Err() == nil {
					p.disconnects.Add(1)
				}
			}
		}
	}()
	if err := waitUntil(ctx, 20*time.Second, "probe session", func() bool { return conn.State() == zk.StateHasSession }); err != nil {
		conn.Close()
		return nil, err
	}
	for _, pth := range []string{"/demo", path} {
		if _, err := conn.Create(pth, []byte("0"), 0, zk.WorldACL(zk.PermAll)); err != nil && !errors.Is(err, zk.ErrNodeExists) {
			conn.Close()
			return nil, fmt.Errorf("sandbox: probe: create %s: %w", pth, err)
		}
	}
	return p, nil
}

// run writes until ctx ends; owned by the caller (ends with ctx).
func (p *probe) run(ctx context.Context) {
	for n := int64(1); ctx.Err() == nil; n++ {
		start := time.Now()
		_, err := p.conn.Set(p.path, []byte(strconv.FormatInt(n, 10)), -1)
		took := time.Since(start)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if transient(err) {
				// A write in flight on a ZooKeeper server that died: the
				// proxy closes the connection so the client learns the
				// outcome by reconnecting into its session (SPEC.md 4.5).
				// Its outcome is unknown; the next write supersedes it.
				p.connLoss.Add(1)
				time.Sleep(20 * time.Millisecond)
				continue
			}
			p.errs.Add(1)
			p.mu.Lock()
			if p.firstErr == nil {
				p.firstErr = err
			}
			p.mu.Unlock()
			time.Sleep(50 * time.Millisecond)
			continue
		}
		p.writes.Add(1)
		p.acked.Store(n)
		p.mu.Lock()
		if took > p.slowest {
			p.slowest, p.slowestAt = took, start
		}
		p.mu.Unlock()
		time.Sleep(20 * time.Millisecond) // a steady write stream (50/s), not a flood
	}
}

// check reads the counter after a sync: it must hold at least the last
// acknowledged value.
//
// A connection closed under the read (a fault's aftermath: the client
// reconnects into its session) is asked again, for up to 20 s.
func (p *probe) check() error {
	var b []byte
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		_, err := p.conn.Sync(p.path)
		if err == nil {
			b, _, err = p.conn.Get(p.path)
		}
		if err == nil {
			break
		}
		if !transient(err) || time.Now().After(deadline) {
			return fmt.Errorf("sandbox: probe: read back after a sync: %w", err)
		}
	}
	v, _ := strconv.ParseInt(string(b), 10, 64)
	if v < p.acked.Load() {
		return fmt.Errorf("sandbox: probe: %s holds %d, but %d was acknowledged", p.path, v, p.acked.Load())
	}
	return nil
}

// lagSampler reads the control plane's sync lag each way every second
// while the sync runs.
type lagSampler struct {
	mu  sync.Mutex
	max int64 // ms, either way
	n   int
}

func (l *lagSampler) run(ctx context.Context, api *controlAPI, id string) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ab, ba, ok := api.syncLag(ctx, id)
		if !ok {
			continue
		}
		l.mu.Lock()
		l.n++
		l.max = max(l.max, ab, ba)
		l.mu.Unlock()
	}
}

func (l *lagSampler) result() (time.Duration, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return time.Duration(l.max) * time.Millisecond, l.n
}
