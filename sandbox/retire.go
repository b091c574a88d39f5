package sandbox

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/zk-migrate/zk-migrate/zkclient"
)

// phase6 runs phase 6 of a migration that is not rolled back: the control
// plane stops the sync, asks every proxy to retire A (close its shadow
// sessions there) and then checks that no client session is left on A.
// The demo then asks each proxy itself (GET /admin/v1/sessions) and each
// server of A (cons), and returns what they said for the report.
func (d *demo) phase6(ctx context.Context) (string, error) {
	if err := d.advance(ctx, 6); err != nil {
		return "", err
	}
	retired := 0
	var not []string
	for _, admin := range d.admins {
		r, err := proxyRetired(ctx, admin)
		switch {
		case err != nil:
			not = append(not, admin+": "+err.Error())
		case r != "source":
			not = append(not, fmt.Sprintf("%s: retired %q", admin, r))
		default:
			retired++
		}
	}
	left, err := sessionsOn(d.a.Addrs())
	if err != nil {
		return "", fmt.Errorf("sandbox: after phase 6: %w", err)
	}
	got := fmt.Sprintf("%d of %d proxies retired A, client sessions left on A: %d", retired, len(d.admins), left)
	d.say("phase 6 done: %s", got)
	if len(not) > 0 || left > 0 {
		return got, fmt.Errorf("sandbox: phase 6 succeeded but %s (%s)", got, strings.Join(not, "; "))
	}
	return got, nil
}

// proxyRetired asks a proxy's admin endpoint which ensemble it retired.
func proxyRetired(ctx context.Context, admin string) (string, error) {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, "http://"+admin+"/admin/v1/sessions", nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var body struct {
		Retired string `json:"retired"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&body); err != nil {
		return "", fmt.Errorf("GET /admin/v1/sessions: %w", err)
	}
	return body.Retired, nil
}

// sessionsOn counts the client sessions the servers list (cons).
func sessionsOn(addrs []string) (int, error) {
	n := 0
	for _, addr := range addrs {
		out, err := zkclient.FourLetterWord(addr, "cons", 3*time.Second)
		if err != nil {
			return 0, fmt.Errorf("cons on %s: %w", addr, err)
		}
		n += strings.Count(out, "sid=0x")
	}
	return n, nil
}
