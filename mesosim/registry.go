package mesosim

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"
)

// ErrNoQuorum means fewer than --quorum log replicas answered in time.
var ErrNoQuorum = errors.New("mesosim: no quorum of log replicas")

// replica is a master's copy of the replicated registry (in memory: a
// restarted master starts empty, as a new Mesos master starts with an
// empty log and catches up).
type replica struct {
	mu  sync.Mutex
	reg Registry
}

func (rp *replica) handleRead(w http.ResponseWriter, r *http.Request) {
	rp.mu.Lock()
	reg := rp.reg.clone()
	rp.mu.Unlock()
	writeJSON(w, http.StatusOK, reg)
}

func (rp *replica) handleWrite(w http.ResponseWriter, r *http.Request) {
	var reg Registry
	if err := readJSON(r, &reg); err != nil {
		httpError(w, http.StatusBadRequest, "%v", err)
		return
	}
	rp.mu.Lock()
	if reg.Version >= rp.reg.Version {
		rp.reg = reg
	}
	v := rp.reg.Version
	rp.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]int64{"version": v})
}

// registrar is the leading master's side of the replicated log: a fetch
// or a store succeeds once a quorum of the replicas in log_replicas/
// answered.
type registrar struct {
	quorum   int
	replicas func() []replicaMember
}

// fetch reads the registry from a quorum of replicas, retrying until
// timeout; the highest version wins.
func (g *registrar) fetch(ctx context.Context, timeout time.Duration) (Registry, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		var best Registry
		n := 0
		for _, r := range ask(ctx, g.replicas(), func(ctx context.Context, url string) (Registry, error) {
			var reg Registry
			err := getJSON(ctx, url+"/sim/log/read", &reg)
			return reg, err
		}) {
			n++
			if r.Version >= best.Version {
				best = r
			}
		}
		if n >= g.quorum {
			best.init()
			return best, nil
		}
		select {
		case <-ctx.Done():
			return Registry{}, fmt.Errorf("%w: failed to perform fetch within %v (%d of %d replicas needed answered)",
				ErrNoQuorum, timeout, n, g.quorum)
		case <-time.After(5 * pollInterval):
		}
	}
}

// store writes reg to every replica and succeeds once a quorum stored it,
// retrying until timeout.
func (g *registrar) store(ctx context.Context, reg Registry, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		n := len(ask(ctx, g.replicas(), func(ctx context.Context, url string) (struct{}, error) {
			return struct{}{}, postJSON(ctx, url+"/sim/log/write", reg, nil)
		}))
		if n >= g.quorum {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: failed to perform store within %v (%d of %d replicas needed stored version %d)",
				ErrNoQuorum, timeout, n, g.quorum, reg.Version)
		case <-time.After(5 * pollInterval):
		}
	}
}

// ask calls f on every replica in parallel and returns the answers of
// those that succeeded.
func ask[T any](ctx context.Context, members []replicaMember, f func(context.Context, string) (T, error)) []T {
	var (
		mu  sync.Mutex
		out []T
		wg  sync.WaitGroup
	)
	for _, m := range members {
		url, err := upidURL(m.UPID)
		if err != nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			if v, err := f(cctx, url); err == nil {
				mu.Lock()
				out = append(out, v)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return out
}
