package membership

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"sync"

	"github.com/zk-migrate/zk-migrate/ensemble"
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

// Flip posts the barrier request to each named proxy's admin endpoint and
// returns those that acknowledged before ctx ended.
func (f *Fleet) Flip(ctx context.Context, migration string, epoch int64, primary ensemble.Name, proxies []string) ([]string, error) {
	apis := map[string]string{}
	for _, m := range f.Agent.Members() {
		apis[m.Name] = m.Meta.API
	}
	client := f.Client
	if client == nil {
		client = http.DefaultClient
	}
	body, _ := json.Marshal(FlipRequest{Migration: migration, Epoch: epoch, Primary: primary})
	var mu sync.Mutex
	var acked []string
	var wg sync.WaitGroup
	for _, p := range proxies {
		api := apis[p]
		if api == "" {
			continue // gone from the pool: it will be fenced
		}
		wg.Add(1)
		go func(p, api string) {
			defer wg.Done()
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, api+FlipPath, bytes.NewReader(body))
			if err != nil {
				return
			}
			req.Header.Set("Content-Type", "application/json")
			if f.Token != "" {
				req.Header.Set("Authorization", "Bearer "+f.Token)
			}
			resp, err := client.Do(req)
			if err != nil {
				return
			}
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				mu.Lock()
				acked = append(acked, p)
				mu.Unlock()
			}
		}(p, api)
	}
	wg.Wait()
	sort.Strings(acked)
	return acked, nil
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
