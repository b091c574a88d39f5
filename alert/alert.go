// Package alert delivers operator alerts (sync failure, lag above
// threshold, task failure, quorum loss, unexpected leader change, a failed
// phase) to a Slack-compatible webhook, the PagerDuty Events API v2 and
// e-mail over SMTP, with retries and de-duplication.
//
// Usage:
//
//	d := alert.NewDispatcher(alert.Config{Sinks: []alert.Sink{
//		&alert.Webhook{URL: slackURL}, &alert.PagerDuty{RoutingKey: key},
//		&alert.Email{Addr: "smtp:25", From: "zk-migrate@x", To: []string{"oncall@x"}}}})
//	go d.Run(ctx)
//	d.Notify(alert.Alert{Kind: "sync_lag", Severity: alert.Warning, Summary: "lag 120ms > 50ms"})
package alert

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/smtp"
	neturl "net/url"
	"strings"
	"sync"
	"time"
)

// Severity follows PagerDuty's levels.
type Severity string

// Severities.
const (
	Critical Severity = "critical"
	Error    Severity = "error"
	Warning  Severity = "warning"
	Info     Severity = "info"
)

// Alert is one condition to report.
type Alert struct {
	Kind      string    `json:"kind"` // sync_failure, sync_lag, task_failure, quorum_loss, leader_change, phase_failed, conflict
	Severity  Severity  `json:"severity"`
	Summary   string    `json:"summary"`
	Detail    string    `json:"detail,omitempty"`
	Migration string    `json:"migration,omitempty"`
	Time      time.Time `json:"time"`
	// DedupKey groups repeats of one condition (default Kind+Migration).
	DedupKey string `json:"dedup_key,omitempty"`
}

func (a Alert) key() string {
	if a.DedupKey != "" {
		return a.DedupKey
	}
	return a.Kind + "/" + a.Migration
}

// Sink delivers alerts to one destination. Send must return an error for
// anything short of delivery, so it is retried.
type Sink interface {
	Name() string
	Send(ctx context.Context, a Alert) error
}

// Config tunes a Dispatcher.
type Config struct {
	Sinks []Sink
	// Retries per sink after the first attempt (default 4), with backoff
	// starting at Backoff (default 1 s) and doubling.
	Retries int
	Backoff time.Duration
	// DedupWindow drops repeats of an alert (same dedup key) within it
	// (default 10 min).
	DedupWindow time.Duration
	Logger      *slog.Logger
}

// Dispatcher queues alerts and delivers them from its own goroutine.
type Dispatcher struct {
	cfg   Config
	queue chan Alert
	mu    sync.Mutex
	sent  map[string]time.Time
}

// NewDispatcher returns a dispatcher; call Run to deliver.
func NewDispatcher(cfg Config) *Dispatcher {
	if cfg.Retries == 0 {
		cfg.Retries = 4
	}
	if cfg.Backoff == 0 {
		cfg.Backoff = time.Second
	}
	if cfg.DedupWindow == 0 {
		cfg.DedupWindow = 10 * time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Dispatcher{cfg: cfg, queue: make(chan Alert, 1024), sent: map[string]time.Time{}}
}

// Notify queues an alert unless the same one was queued within the dedup
// window. It never blocks: when the queue is full the alert is logged and
// dropped.
func (d *Dispatcher) Notify(a Alert) bool {
	if a.Time.IsZero() {
		a.Time = time.Now().UTC()
	}
	d.mu.Lock()
	if t, ok := d.sent[a.key()]; ok && a.Time.Sub(t) < d.cfg.DedupWindow {
		d.mu.Unlock()
		return false
	}
	d.sent[a.key()] = a.Time
	d.mu.Unlock()
	select {
	case d.queue <- a:
		return true
	default:
		d.cfg.Logger.Error("alert queue full; alert dropped", "kind", a.Kind, "summary", a.Summary)
		return false
	}
}

// Run delivers queued alerts until ctx ends.
func (d *Dispatcher) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case a := <-d.queue:
			var wg sync.WaitGroup
			for _, s := range d.cfg.Sinks {
				wg.Add(1)
				go func(s Sink) {
					defer wg.Done()
					d.deliver(ctx, s, a)
				}(s)
			}
			wg.Wait()
		}
	}
}

func (d *Dispatcher) deliver(ctx context.Context, s Sink, a Alert) {
	backoff := d.cfg.Backoff
	for attempt := 0; ; attempt++ {
		sctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		err := s.Send(sctx, a)
		cancel()
		if err == nil {
			return
		}
		if attempt >= d.cfg.Retries || ctx.Err() != nil {
			d.cfg.Logger.Error("alert not delivered", "sink", s.Name(), "kind", a.Kind, "attempts", attempt+1, "err", err)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff *= 2
	}
}

func postJSON(ctx context.Context, client *http.Client, url string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		// The URL may be the secret (a Slack webhook): keep it out of the
		// error, which is logged.
		var ue *neturl.Error
		if errors.As(err, &ue) {
			return fmt.Errorf("%s %s://%s/(redacted): %w", ue.Op, req.URL.Scheme, req.URL.Host, ue.Err)
		}
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

func text(a Alert) string {
	s := fmt.Sprintf("[zk-migrate %s] %s: %s", strings.ToUpper(string(a.Severity)), a.Kind, a.Summary)
	if a.Migration != "" {
		s += " (migration " + a.Migration + ")"
	}
	if a.Detail != "" {
		s += "\n" + a.Detail
	}
	return s
}

// Webhook posts Slack-compatible JSON ({"text": ...}) to a URL.
type Webhook struct {
	URL    string
	Client *http.Client
}

// Name is "webhook".
func (w *Webhook) Name() string { return "webhook" }

// Send posts the alert.
func (w *Webhook) Send(ctx context.Context, a Alert) error {
	return postJSON(ctx, w.Client, w.URL, map[string]any{"text": text(a), "alert": a})
}

// PagerDutyURL is the Events API v2 endpoint.
const PagerDutyURL = "https://events.pagerduty.com/v2/enqueue"

// PagerDuty triggers PagerDuty Events API v2 incidents.
type PagerDuty struct {
	RoutingKey string
	URL        string // default PagerDutyURL
	Source     string // default "zk-migrate"
	Client     *http.Client
}

// Name is "pagerduty".
func (p *PagerDuty) Name() string { return "pagerduty" }

// Send triggers an event; the dedup key lets PagerDuty group repeats.
func (p *PagerDuty) Send(ctx context.Context, a Alert) error {
	url, source := p.URL, p.Source
	if url == "" {
		url = PagerDutyURL
	}
	if source == "" {
		source = "zk-migrate"
	}
	return postJSON(ctx, p.Client, url, map[string]any{
		"routing_key":  p.RoutingKey,
		"event_action": "trigger",
		"dedup_key":    "zk-migrate/" + a.key(),
		"payload": map[string]any{
			"summary":        a.Summary,
			"source":         source,
			"severity":       string(a.Severity),
			"timestamp":      a.Time.Format(time.RFC3339),
			"component":      a.Migration,
			"class":          a.Kind,
			"custom_details": a,
		},
	})
}

// Email sends alerts over SMTP.
type Email struct {
	Addr string // host:port
	From string
	To   []string
	Auth smtp.Auth // optional (PLAIN over TLS in production)
}

// Name is "email".
func (e *Email) Name() string { return "email" }

// Send mails the alert.
func (e *Email) Send(_ context.Context, a Alert) error {
	var b strings.Builder
	fmt.Fprintf(&b, "From: %s\r\nTo: %s\r\nSubject: [zk-migrate] %s: %s\r\nDate: %s\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n%s\r\n",
		e.From, strings.Join(e.To, ", "), a.Kind, a.Summary, a.Time.Format(time.RFC1123Z), strings.ReplaceAll(text(a), "\n", "\r\n"))
	return smtp.SendMail(e.Addr, e.Auth, e.From, e.To, []byte(b.String()))
}
