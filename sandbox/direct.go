package sandbox

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zookeeper/zk"
)

// directWriter is the acceptance scenario's client that bypasses the
// proxies (DESIGN-BRIEF: "plus a direct writer bypassing the proxies"): a
// tool or an operator's zkCli talking to ensemble A itself. It creates a
// new znode under its directory every second; while B is the primary its
// writes reach B only through the control plane's sync (after its mirror
// grace: the rollback's reverse flip is guarded all the same, SPEC 4.10),
// so every one it had acknowledged must be on both ensembles at the end.
// Its session is closed before phase 6, which finds no client session
// left on A.
type directWriter struct {
	conn *zk.Conn
	dir  string

	connLoss atomic.Int64
	mu       sync.Mutex
	acked    []string
	errs     int
	firstErr error
}

// directEvery is the direct writer's interval: more often than the
// replicator's mirror grace (5 s), so A and B are never equal at one
// instant while it writes A as the secondary.
const directEvery = time.Second

// startDirectWriter connects to addrs (ensemble A's servers) and creates
// its directory.
func startDirectWriter(ctx context.Context, addrs []string, dir string) (*directWriter, error) {
	conn, _, err := zk.Connect(addrs, 10*time.Second, zk.WithLogInfo(false), zk.WithLogger(quietLogger{}))
	if err != nil {
		return nil, fmt.Errorf("sandbox: direct writer: %w", err)
	}
	if err := waitUntil(ctx, 20*time.Second, "the direct writer's session", func() bool { return conn.State() == zk.StateHasSession }); err != nil {
		conn.Close()
		return nil, err
	}
	for _, p := range []string{"/demo", dir} {
		if _, err := conn.Create(p, nil, 0, zk.WorldACL(zk.PermAll)); err != nil && !errors.Is(err, zk.ErrNodeExists) {
			conn.Close()
			return nil, fmt.Errorf("sandbox: direct writer: create %s: %w", p, err)
		}
	}
	return &directWriter{conn: conn, dir: dir}, nil
}

// run writes until ctx ends; owned by the caller. A write whose connection
// closed under it (a server of A killed) has an unknown outcome: it is not
// counted as acknowledged, and the next write takes a new name.
func (w *directWriter) run(ctx context.Context) {
	for n := 1; ctx.Err() == nil; n++ {
		p := fmt.Sprintf("%s/w-%06d", w.dir, n)
		_, err := w.conn.Create(p, []byte("direct"), 0, zk.WorldACL(zk.PermAll))
		switch {
		case err == nil:
			w.mu.Lock()
			w.acked = append(w.acked, p)
			w.mu.Unlock()
		case ctx.Err() != nil:
			return
		case transient(err):
			w.connLoss.Add(1)
		default:
			w.mu.Lock()
			w.errs++
			if w.firstErr == nil {
				w.firstErr = fmt.Errorf("direct writer: create %s: %w", p, err)
			}
			w.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(directEvery):
		}
	}
}

// missing returns the acknowledged znodes absent from the ensemble at
// addrs (read after a sync, on a session of its own).
func (w *directWriter) missing(ctx context.Context, addrs []string) ([]string, error) {
	conn, _, err := zk.Connect(addrs, 10*time.Second, zk.WithLogInfo(false), zk.WithLogger(quietLogger{}))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if err := waitUntil(ctx, 20*time.Second, "a session to check the direct writes", func() bool { return conn.State() == zk.StateHasSession }); err != nil {
		return nil, err
	}
	if _, err := conn.Sync(w.dir); err != nil {
		return nil, fmt.Errorf("sync %s: %w", w.dir, err)
	}
	kids, _, err := conn.Children(w.dir)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", w.dir, err)
	}
	have := make(map[string]bool, len(kids))
	for _, k := range kids {
		have[w.dir+"/"+k] = true
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for _, p := range w.acked {
		if !have[p] {
			out = append(out, p)
		}
	}
	return out, nil
}
