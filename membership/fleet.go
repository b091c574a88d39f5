package membership

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/fence"
)

// FlipRequest is what the control plane asks a proxy in a flip barrier:
// drain the writes still being mirrored, then use Primary as primary and
// hold Epoch. The proxy answers 200 only when that is done; answering again
// for an epoch it already holds is expected (a new leader repeats the
// request).
type FlipRequest struct {
	Migration string        `json:"migration"`
	Epoch     int64         `json:"epoch"`
	Primary   ensemble.Name `json:"primary"`
	// Phase is the step of the two-phase barrier: PhaseHold, PhaseSwap or
	// PhaseRelease; empty asks for the whole flip in one request (hold,
	// drain, fence, swap, release).
	Phase string `json:"phase,omitempty"`
}

// The phases of the two-phase barrier (SPEC.md 4.10).
const (
	// PhaseHold: hold client requests and drain; the answer carries the
	// hold's budget (HoldReply). The hold ends by itself after it.
	PhaseHold = "hold"
	// PhaseSwap: the fences record the epoch; move every session to
	// Primary under the hold.
	PhaseSwap = "swap"
	// PhaseRelease: end the hold (after the swaps, or to abort).
	PhaseRelease = "release"
)

// HoldReply is a proxy's answer to PhaseHold (and, with BudgetMS 0, to the
// other phases).
type HoldReply struct {
	Epoch   int64         `json:"epoch"`
	Primary ensemble.Name `json:"primary"`
	// BudgetMS is how long the hold lasts from the request unless
	// released (0: nothing held, the proxy already serves Primary at Epoch).
	BudgetMS int64 `json:"budget_ms,omitempty"`
	// Marker is the proxy's hold marker on the old primary (PhaseHold):
	// the control plane raises the old primary's fence only while it has
	// this version (fence.RaiseIf). Absent, the fence is raised without
	// that condition for this proxy.
	Marker *fence.Marker `json:"marker,omitempty"`
}

// FlipPath is the proxy admin endpoint of the barrier.
const FlipPath = "/admin/v1/flip"

// Fleet is the control.ProxyFleet of the live proxies in the gossip pool.
type Fleet struct {
	Agent  *Agent
	Client *http.Client
	// Token is the bearer token sent with every flip request (the proxies'
	// --admin-token-file); a proxy refuses a flip without it (401).
	Token string
}

// Live lists the live proxies by name.
func (f *Fleet) Live(context.Context) ([]string, error) {
	var out []string
	for _, m := range f.Agent.Members() {
		if m.Meta.Role == RoleProxy {
			out = append(out, m.Name)
		}
	}
	sort.Strings(out)
	return out, nil
}

// Flip posts the one-shot barrier request to each named proxy's admin
// endpoint and returns those that acknowledged before ctx ended. Proxies
// that answered with another status are named in a *RefusedError.
func (f *Fleet) Flip(ctx context.Context, migration string, epoch int64, primary ensemble.Name, proxies []string) ([]string, error) {
	replies, err := f.post(ctx, FlipRequest{Migration: migration, Epoch: epoch, Primary: primary}, proxies)
	return sortedKeys(replies), err
}

// Hold asks the proxies to hold and drain (PhaseHold) and returns those
// that hold, the shortest budget among them and their hold markers.
// Proxies that answered but do not hold (their drain did not finish
// within their pause budget: 503) are named in a *RefusedError.
func (f *Fleet) Hold(ctx context.Context, migration string, epoch int64, primary ensemble.Name, proxies []string) ([]string, time.Duration, map[string]fence.Marker, error) {
	replies, err := f.post(ctx, FlipRequest{Migration: migration, Epoch: epoch, Primary: primary, Phase: PhaseHold}, proxies)
	var budget time.Duration
	markers := map[string]fence.Marker{}
	for p, r := range replies {
		if b := time.Duration(r.BudgetMS) * time.Millisecond; b > 0 && (budget == 0 || b < budget) {
			budget = b
		}
		if r.Marker != nil {
			markers[p] = *r.Marker
		}
	}
	return sortedKeys(replies), budget, markers, err
}

// Swap asks the proxies to move their sessions (PhaseSwap) and returns
// those that did. Proxies that answered but did not swap are named in a
// *RefusedError.
func (f *Fleet) Swap(ctx context.Context, migration string, epoch int64, primary ensemble.Name, proxies []string) ([]string, error) {
	replies, err := f.post(ctx, FlipRequest{Migration: migration, Epoch: epoch, Primary: primary, Phase: PhaseSwap}, proxies)
	return sortedKeys(replies), err
}

// Release ends the proxies' holds (PhaseRelease); a proxy that does not
// answer ends its hold by itself at its budget.
func (f *Fleet) Release(ctx context.Context, migration string, epoch int64, proxies []string) {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, _ = f.post(rctx, FlipRequest{Migration: migration, Epoch: epoch, Phase: PhaseRelease}, proxies)
}

// RefusedError names the proxies that answered a flip request with a
// status other than 200: unlike those that did not answer (connection
// refused, no answer before the deadline, no admin endpoint in gossip, a
// gateway's 502 or 504),
// they are alive, and could not do the step now (503: their drain did not
// finish within their pause budget; 409: another epoch or primary; 401:
// the token). The control plane holds them again rather than fencing
// them (control.Refusals).
type RefusedError struct {
	// Phase is the request's phase ("" for the one-shot flip).
	Phase string
	// Reasons maps each proxy to its answer: "503: drain: ...".
	Reasons map[string]string
}

// Error lists the proxies and their answers, sorted by name.
func (e *RefusedError) Error() string {
	phase := e.Phase
	if phase == "" {
		phase = "flip"
	}
	names := make([]string, 0, len(e.Reasons))
	for p := range e.Reasons {
		names = append(names, p)
	}
	sort.Strings(names)
	parts := make([]string, len(names))
	for i, p := range names {
		parts[i] = p + " answered " + e.Reasons[p]
	}
	return fmt.Sprintf("%s request refused: %s", phase, strings.Join(parts, "; "))
}

// Refused maps each proxy that answered but did not do the step to its
// answer (control.Refusals).
func (e *RefusedError) Refused() map[string]string { return e.Reasons }

// post sends req to each named proxy's admin endpoint at once and returns
// the replies of those that answered 200 before ctx ended, and a
// *RefusedError naming those that answered with another status.
func (f *Fleet) post(ctx context.Context, req FlipRequest, proxies []string) (map[string]HoldReply, error) {
	apis := map[string]string{}
	for _, m := range f.Agent.Members() {
		apis[m.Name] = m.Meta.API
	}
	client := f.Client
	if client == nil {
		client = http.DefaultClient
	}
	body, _ := json.Marshal(req)
	var mu sync.Mutex
	out := map[string]HoldReply{}
	refused := map[string]string{}
	var wg sync.WaitGroup
	for _, p := range proxies {
		api := apis[p]
		if api == "" {
			continue // gone from the pool: it will be fenced
		}
		wg.Add(1)
		go func(p, api string) {
			defer wg.Done()
			hr, err := http.NewRequestWithContext(ctx, http.MethodPost, api+FlipPath, bytes.NewReader(body))
			if err != nil {
				return
			}
			hr.Header.Set("Content-Type", "application/json")
			if f.Token != "" {
				hr.Header.Set("Authorization", "Bearer "+f.Token)
			}
			resp, err := client.Do(hr)
			if err != nil {
				return
			}
			defer resp.Body.Close()
			if resp.StatusCode == http.StatusBadGateway || resp.StatusCode == http.StatusGatewayTimeout {
				return // a gateway between us could not reach the proxy: no answer from it
			}
			if resp.StatusCode != http.StatusOK {
				b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<12))
				mu.Lock()
				refused[p] = fmt.Sprintf("%d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
				mu.Unlock()
				return
			}
			var r HoldReply
			_ = json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&r) // a proxy answering 200 without a body holds nothing
			mu.Lock()
			out[p] = r
			mu.Unlock()
		}(p, api)
	}
	wg.Wait()
	if len(refused) > 0 {
		return out, &RefusedError{Phase: req.Phase, Reasons: refused}
	}
	return out, nil
}

func sortedKeys(m map[string]HoldReply) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Stale lists live proxies advertising an epoch below epoch: after a flip
// they must not be serving (they missed it and are fenced).
func (f *Fleet) Stale(epoch int64) []string {
	var out []string
	for _, m := range f.Agent.Members() {
		if m.Meta.Role == RoleProxy && m.Meta.Epoch < epoch {
			out = append(out, fmt.Sprintf("%s (epoch %d)", m.Name, m.Meta.Epoch))
		}
	}
	sort.Strings(out)
	return out
}
