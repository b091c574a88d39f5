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

	"github.com/zk-migrate/zk-migrate/ensemble"
)

// RetirePath is the proxy admin endpoint of phase 6: retire the old
// ensemble (stop mirroring to it, close the shadow sessions there).
const RetirePath = "/admin/v1/retire"

// RetireRequest is what the control plane asks a proxy in phase 6: retire
// Ensemble (the old one, "A"). The proxy answers 200 once no shadow
// session of it is left there; asking again is expected (a new leader
// repeats the request) and answered 200 again.
type RetireRequest struct {
	Migration string        `json:"migration"`
	Ensemble  ensemble.Name `json:"ensemble"`
}

// RetireReply is a proxy's answer to a RetireRequest.
type RetireReply struct {
	// Retired is the ensemble the proxy has retired ("" for a proxy with
	// one ensemble: it mirrors nothing).
	Retired ensemble.Name `json:"retired,omitempty"`
	// Closed is how many shadow sessions this request closed (0 when
	// asked again).
	Closed int `json:"closed"`
}

// Retire posts a RetireRequest to each named proxy's admin endpoint at
// once and returns, per proxy that did not retire old before ctx ended,
// why: its answer, the error reaching it, or that it advertises no admin
// endpoint. An empty map means every named proxy retired old.
func (f *Fleet) Retire(ctx context.Context, migration string, old ensemble.Name, proxies []string) (map[string]string, error) {
	apis := map[string]string{}
	for _, m := range f.Agent.Members() {
		apis[m.Name] = m.Meta.API
	}
	client := f.Client
	if client == nil {
		client = http.DefaultClient
	}
	body, err := json.Marshal(RetireRequest{Migration: migration, Ensemble: old})
	if err != nil {
		return nil, err
	}
	var mu sync.Mutex
	failed := map[string]string{}
	fail := func(p, why string) {
		mu.Lock()
		failed[p] = why
		mu.Unlock()
	}
	var wg sync.WaitGroup
	for _, p := range proxies {
		api := apis[p]
		if api == "" {
			fail(p, "no admin endpoint in gossip (gone from the pool, or started without --admin-addr)")
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			hr, err := http.NewRequestWithContext(ctx, http.MethodPost, api+RetirePath, bytes.NewReader(body))
			if err != nil {
				fail(p, err.Error())
				return
			}
			hr.Header.Set("Content-Type", "application/json")
			if f.Token != "" {
				hr.Header.Set("Authorization", "Bearer "+f.Token)
			}
			resp, err := client.Do(hr)
			if err != nil {
				fail(p, "no answer: "+err.Error())
				return
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<12))
			if resp.StatusCode != http.StatusOK {
				fail(p, fmt.Sprintf("answered %d: %s", resp.StatusCode, strings.TrimSpace(string(b))))
			}
		}()
	}
	wg.Wait()
	return failed, nil
}

// NotRetired lists the live proxies whose gossip metadata does not (yet)
// say they retired old (Meta.Retired): after phase 6 asked them, a proxy
// listed here still holds, or may hold, sessions on old.
func (f *Fleet) NotRetired(old ensemble.Name) []string {
	out := []string{}
	for _, m := range f.Agent.Members() {
		if m.Meta.Role == RoleProxy && m.Meta.Retired != old {
			out = append(out, m.Name)
		}
	}
	sort.Strings(out)
	return out
}
