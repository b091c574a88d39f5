package sandbox

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/go-zookeeper/zk"
)

// The register workload (issue 12 item 4): clients of different proxies
// write one znode with blind and version-conditioned setData through the
// whole migration, and the history is checked for linearizability with
// porcupine. Only writes are modelled: in ZooKeeper 3.8 sync+getData is not
// a linearizable read (DESIGN-BRIEF), so reads only fetch a plausible
// version for the next conditional write. The state is the znode's
// version: a conditional write succeeds exactly when its version matches;
// a write whose outcome is unknown (the connection closed under it) is
// pending for ever and applies only if it matched. A write duplicated or
// lost across the flip shows as a version gap; one that reached the old
// primary after the flip, as a version that cannot follow.

// regInput is a setData: blind (Cond false) or expecting a version.
type regInput struct {
	Cond   bool
	Expect int32
}

// regOutput is its answer: the new version, BADVERSION, or unknown.
type regOutput struct {
	Unknown bool
	OK      bool
	Version int32
}

var registerModel = porcupine.Model{
	Init: func() any { return int32(0) }, // created with version 0
	Step: func(state, input, output any) (bool, any) {
		v, in, out := state.(int32), input.(regInput), output.(regOutput)
		matches := !in.Cond || in.Expect == v
		switch {
		case out.Unknown:
			if matches {
				return true, v + 1
			}
			return true, v
		case out.OK:
			return matches && out.Version == v+1, v + 1
		default: // BADVERSION
			return !matches, v
		}
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(regInput), output.(regOutput)
		call := "set(-1)"
		if in.Cond {
			call = fmt.Sprintf("set(%d)", in.Expect)
		}
		switch {
		case out.Unknown:
			return call + " -> ?"
		case out.OK:
			return fmt.Sprintf("%s -> version %d", call, out.Version)
		}
		return call + " -> BADVERSION"
	},
}

// register runs the workload: one client per proxy address.
type register struct {
	path  string
	start time.Time
	names []string // by client: the proxy it writes through

	mu     sync.Mutex
	ops    []porcupine.Operation
	errs   []string // unexpected errors (first few)
	nerrs  int
	unsure int
}

// runRegister writes path through each of addrs (the proxies named names)
// until ctx ends; it returns once every client has stopped. The znode is
// created first.
func runRegister(ctx context.Context, addrs, names []string, path string, ready chan<- error) *register {
	r := &register{path: path, start: time.Now(), names: names}
	var conns []*zk.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for _, a := range addrs {
		c, _, err := zk.Connect([]string{a}, 10*time.Second, zk.WithLogInfo(false), zk.WithLogger(quietLogger{}))
		if err != nil {
			ready <- fmt.Errorf("sandbox: register client: %w", err)
			return r
		}
		conns = append(conns, c)
	}
	if err := waitUntil(ctx, 20*time.Second, "register sessions", func() bool {
		for _, c := range conns {
			if c.State() != zk.StateHasSession {
				return false
			}
		}
		return true
	}); err != nil {
		ready <- err
		return r
	}
	if _, err := conns[0].Create(path, nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		ready <- fmt.Errorf("sandbox: register: create %s: %w", path, err)
		return r
	}
	ready <- nil
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.client(ctx, i, c)
		}()
	}
	wg.Wait()
	return r
}

func (r *register) client(ctx context.Context, id int, c *zk.Conn) {
	now := func() int64 { return int64(time.Since(r.start)) }
	for ctx.Err() == nil {
		in := regInput{}
		if rand.IntN(2) == 0 {
			_, st, err := c.Get(r.path)
			if err == nil {
				in = regInput{Cond: true, Expect: st.Version}
			}
		}
		version := int32(-1)
		if in.Cond {
			version = in.Expect
		}
		call := now()
		st, err := c.Set(r.path, []byte(fmt.Sprint(id)), version)
		ret := now()
		var out regOutput
		switch {
		case err == nil:
			out = regOutput{OK: true, Version: st.Version}
		case errors.Is(err, zk.ErrBadVersion):
		case ctx.Err() != nil:
			return // our own stop: the outcome does not matter
		default:
			if !transient(err) {
				r.mu.Lock()
				r.nerrs++
				if len(r.errs) < 3 {
					r.errs = append(r.errs, err.Error())
				}
				r.mu.Unlock()
			}
			out, ret = regOutput{Unknown: true}, math.MaxInt64
		}
		r.mu.Lock()
		if out.Unknown {
			r.unsure++
		}
		r.ops = append(r.ops, porcupine.Operation{ClientId: id, Input: in, Call: call, Output: out, Return: ret})
		r.mu.Unlock()
		if out.Unknown {
			time.Sleep(50 * time.Millisecond)
		}
		time.Sleep(50 * time.Millisecond) // 20 writes/s a client: phase 1's digests must still meet
	}
}

// save writes the history as JSON lines (client, call and return in ns
// from the start, input, output) for a look after the run.
func (r *register) save(path string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	for _, op := range r.ops {
		_ = enc.Encode(map[string]any{"client": op.ClientId, "call": op.Call, "return": op.Return, "in": op.Input, "out": op.Output})
	}
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	return nil
}

// versionGaps explains an Illegal verdict in the register's own terms:
// among the versions acknowledged to clients, those given twice and those
// skipped (a write applied that no client made, or applied twice; a write
// of unknown outcome may account for one), and the anomalies, each naming
// its writes (client, input, output, call and return times since the
// demo's start, the register starting at offset), in time order.
func (r *register) versionGaps(offset time.Duration) (dups, skipped int, anomalies []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	acked := map[int32][]porcupine.Operation{}
	for _, op := range r.ops {
		if out := op.Output.(regOutput); out.OK {
			acked[out.Version] = append(acked[out.Version], op)
		}
	}
	vs := make([]int32, 0, len(acked))
	for v := range acked {
		vs = append(vs, v)
	}
	slices.Sort(vs)
	type anomaly struct {
		at   int64
		text string
	}
	var found []anomaly
	for _, v := range vs {
		if ops := acked[v]; len(ops) > 1 {
			dups += len(ops) - 1
			parts := make([]string, len(ops))
			for i, op := range ops {
				parts[i] = r.describe(op, offset)
			}
			found = append(found, anomaly{ops[1].Return, fmt.Sprintf("version %d acknowledged %d times: %s", v, len(ops), strings.Join(parts, "; "))})
		}
	}
	for i := 1; i < len(vs); i++ {
		d := vs[i] - vs[i-1]
		if d <= 1 {
			continue
		}
		skipped += int(d - 1)
		before, after := acked[vs[i-1]][0], acked[vs[i]][0]
		unknown := 0 // writes of unknown outcome that began before the later version's answer
		for _, op := range r.ops {
			if op.Output.(regOutput).Unknown && op.Call < after.Return {
				unknown++
			}
		}
		what := fmt.Sprintf("version %d", vs[i-1]+1)
		if d > 2 {
			what = fmt.Sprintf("versions %d-%d", vs[i-1]+1, vs[i]-1)
		}
		found = append(found, anomaly{after.Return, fmt.Sprintf("%s acknowledged to no client (writes of unknown outcome begun by then: %d), between %s and %s",
			what, unknown, r.describe(before, offset), r.describe(after, offset))})
	}
	slices.SortStableFunc(found, func(a, b anomaly) int { return cmp.Compare(a.at, b.at) })
	for _, a := range found {
		anomalies = append(anomalies, a.text)
	}
	return dups, skipped, anomalies
}

// describe names one write of the history: its client, call and answer,
// and when (seconds since the demo's start).
func (r *register) describe(op porcupine.Operation, offset time.Duration) string {
	at := func(ns int64) string { return fmt.Sprintf("%.3fs", (offset + time.Duration(ns)).Seconds()) }
	ret := "never answered"
	if op.Return != math.MaxInt64 {
		ret = at(op.Return)
	}
	who := fmt.Sprintf("client %d", op.ClientId)
	if op.ClientId < len(r.names) {
		who += " (" + r.names[op.ClientId] + ")"
	}
	return fmt.Sprintf("%s %s, %s to %s", who, registerModel.DescribeOperation(op.Input, op.Output), at(op.Call), ret)
}

// check runs porcupine on the history (within timeout); an Illegal one
// is also drawn by porcupine's visualization into html (if not empty).
func (r *register) check(timeout time.Duration, html string) (porcupine.CheckResult, error) {
	r.mu.Lock()
	ops := append([]porcupine.Operation(nil), r.ops...)
	r.mu.Unlock()
	res, info := porcupine.CheckOperationsVerbose(registerModel, ops, timeout)
	if res == porcupine.Illegal && html != "" {
		if err := porcupine.VisualizePath(registerModel, info, html); err != nil {
			return res, fmt.Errorf("sandbox: register history: %w", err)
		}
	}
	return res, nil
}
