package proxy

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Log lines a client can provoke are rate-limited, so one client pipelining
// bad requests (or a flood of bad connections) cannot fill the disk: each
// scope (a client connection and its session, or the server for events
// before a session exists) may log logBurst lines per reason per logWindow.
// Lines beyond that are dropped and counted in log_lines_dropped_total
// {reason}; the last line allowed says so, and the first line of the next
// window carries how many were suppressed.
const (
	logBurst  = 10
	logWindow = time.Minute
)

// logLimiter keeps the budgets of one scope.
type logLimiter struct {
	m       *Metrics
	mu      sync.Mutex
	budgets map[string]*logBudget
}

type logBudget struct {
	start   time.Time
	n       int
	dropped int
}

func newLogLimiter(m *Metrics) *logLimiter {
	return &logLimiter{m: m, budgets: map[string]*logBudget{}}
}

// log writes msg at level through l unless reason's budget is spent.
func (ll *logLimiter) log(l *slog.Logger, level slog.Level, reason, msg string, args ...any) {
	if !l.Enabled(context.Background(), level) {
		return
	}
	now := time.Now()
	ll.mu.Lock()
	b := ll.budgets[reason]
	if b == nil {
		b = &logBudget{start: now}
		ll.budgets[reason] = b
	}
	if now.Sub(b.start) >= logWindow {
		if b.dropped > 0 {
			args = append(args, "suppressed", b.dropped)
		}
		b.start, b.n, b.dropped = now, 0, 0
	}
	if b.n >= logBurst {
		b.dropped++
		ll.mu.Unlock()
		ll.m.logsDropped.WithLabelValues(reason).Inc()
		return
	}
	b.n++
	if b.n == logBurst {
		args = append(args, "rate_limited", "further lines for this reason and scope are dropped for up to "+logWindow.String()+" (counted in zkmigrate_proxy_log_lines_dropped_total)")
	}
	ll.mu.Unlock()
	l.Log(context.Background(), level, msg, args...)
}

func (ll *logLimiter) warn(l *slog.Logger, reason, msg string, args ...any) {
	ll.log(l, slog.LevelWarn, reason, msg, args...)
}
