package alert

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// smtpServer is a minimal real SMTP receiver on loopback: enough of RFC
// 5321 for net/smtp (EHLO, MAIL, RCPT, DATA, QUIT).
type smtpServer struct {
	ln   net.Listener
	mu   sync.Mutex
	msgs []string
}

func startSMTP(t *testing.T) *smtpServer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &smtpServer{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go s.serve(c)
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return s
}

func (s *smtpServer) serve(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	say := func(line string) { _, _ = io.WriteString(c, line+"\r\n") }
	say("220 test ESMTP")
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		cmd := strings.ToUpper(strings.TrimSpace(line))
		switch {
		case strings.HasPrefix(cmd, "EHLO"), strings.HasPrefix(cmd, "HELO"):
			say("250 test")
		case strings.HasPrefix(cmd, "MAIL"), strings.HasPrefix(cmd, "RCPT"):
			say("250 ok")
		case cmd == "DATA":
			say("354 go on")
			var b strings.Builder
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if l == ".\r\n" {
					break
				}
				b.WriteString(l)
			}
			s.mu.Lock()
			s.msgs = append(s.msgs, b.String())
			s.mu.Unlock()
			say("250 queued")
		case cmd == "QUIT":
			say("221 bye")
			return
		default:
			say("250 ok")
		}
	}
}

func (s *smtpServer) messages() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.msgs...)
}

// receiver is a real HTTP server on loopback standing in for Slack and
// PagerDuty. The webhook's first request fails, to prove the retry.
type receiver struct {
	mu       sync.Mutex
	webhook  []map[string]any
	pd       []map[string]any
	failOnce bool
}

func startReceiver(t *testing.T) (*receiver, string) {
	rc := &receiver{failOnce: true}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /slack", func(w http.ResponseWriter, r *http.Request) {
		rc.mu.Lock()
		defer rc.mu.Unlock()
		if rc.failOnce {
			rc.failOnce = false
			http.Error(w, "try again", http.StatusInternalServerError)
			return
		}
		var v map[string]any
		_ = json.NewDecoder(r.Body).Decode(&v)
		rc.webhook = append(rc.webhook, v)
	})
	mux.HandleFunc("POST /v2/enqueue", func(w http.ResponseWriter, r *http.Request) {
		var v map[string]any
		_ = json.NewDecoder(r.Body).Decode(&v)
		rc.mu.Lock()
		rc.pd = append(rc.pd, v)
		rc.mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
		_, _ = io.WriteString(w, `{"status":"success"}`)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return rc, "http://" + ln.Addr().String()
}

func TestAlertsReachRealReceiversWithRetryAndDedup(t *testing.T) {
	rc, base := startReceiver(t)
	mail := startSMTP(t)
	d := NewDispatcher(Config{Backoff: 20 * time.Millisecond, DedupWindow: time.Hour, Sinks: []Sink{
		&Webhook{URL: base + "/slack"},
		&PagerDuty{RoutingKey: "R0UT1NGKEY", URL: base + "/v2/enqueue"},
		&Email{Addr: mail.ln.Addr().String(), From: "zk-migrate@example.org", To: []string{"oncall@example.org"}},
	}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	a := Alert{Kind: "sync_lag", Severity: Warning, Summary: "sync lag 120ms above 50ms", Migration: "prod"}
	if !d.Notify(a) {
		t.Fatal("first alert not queued")
	}
	if d.Notify(a) {
		t.Fatal("a repeat within the dedup window was queued")
	}
	if !d.Notify(Alert{Kind: "phase_failed", Severity: Critical, Summary: "phase 3 failed", Migration: "prod"}) {
		t.Fatal("a different alert was deduplicated")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		rc.mu.Lock()
		nw, np := len(rc.webhook), len(rc.pd)
		rc.mu.Unlock()
		if nw == 2 && np == 2 && len(mail.messages()) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("delivered: webhook %d, pagerduty %d, email %d (want 2 each)", nw, np, len(mail.messages()))
		}
		time.Sleep(20 * time.Millisecond)
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if txt, _ := rc.webhook[0]["text"].(string); !strings.Contains(txt, "sync lag 120ms above 50ms") {
		t.Fatalf("webhook text: %q", txt)
	}
	pd := rc.pd[0]
	payload, _ := pd["payload"].(map[string]any)
	if pd["routing_key"] != "R0UT1NGKEY" || pd["event_action"] != "trigger" || pd["dedup_key"] != "zk-migrate/sync_lag/prod" ||
		payload["severity"] != "warning" || payload["source"] != "zk-migrate" {
		t.Fatalf("pagerduty event: %+v", pd)
	}
	if m := mail.messages()[0]; !strings.Contains(m, "Subject: [zk-migrate] sync_lag: sync lag 120ms above 50ms") {
		t.Fatalf("mail:\n%s", m)
	}
}

// TestWebhookErrorHidesTheURL: a delivery error is logged, and a Slack
// webhook URL is a secret: the error names the host, not the path.
func TestWebhookErrorHidesTheURL(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens: the post fails
	w := &Webhook{URL: "http://" + addr + "/services/T0/B0/xoxSECRET"}
	err = w.Send(context.Background(), Alert{Kind: "k", Summary: "s"})
	if err == nil || strings.Contains(err.Error(), "xoxSECRET") || !strings.Contains(err.Error(), addr) {
		t.Fatalf("error %v", err)
	}
}
