package sandbox

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/zk-migrate/zk-migrate/mesosim"
)

// TestReportFailsWhenAMesosProcessLosesItsSession: the demo's verdict
// comes from what the Mesos processes log. A master whose session expired
// (the server's SESSION_EXPIRED, or the C client giving up after the
// session timeout, as Mesos does), a process that exited, or an unplanned
// leader change makes the report FAIL; reconnects alone do not.
func TestReportFailsWhenAMesosProcessLosesItsSession(t *testing.T) {
	logLines := func(f func(*slog.Logger)) string {
		var b bytes.Buffer
		f(slog.New(slog.NewJSONHandler(&b, nil))) // mesos-sim's own handler
		return b.String()
	}
	clean := logLines(func(l *slog.Logger) {
		l.Info("ZooKeeper session established", "session_id", "0x1")
		l.Info("Elected as the leading master!")
	})
	expired := logLines(func(l *slog.Logger) {
		l.Warn("Lost candidacy as a follower... Contend again",
			"err", fmt.Errorf("%w: the server expired session 0x1 (contender)", mesosim.ErrSessionExpired).Error())
	})
	gaveUp := logLines(func(l *slog.Logger) {
		l.Warn("detector lost its ZooKeeper session; detecting again with a new one",
			"err", fmt.Errorf("%w: timed out waiting to reconnect to ZooKeeper for 10s; forcing expiration of session 0x2 (detector)", mesosim.ErrSessionExpired).Error())
	})
	exited := logLines(func(l *slog.Logger) {
		l.Error("Lost leadership... committing suicide!", "err", "the leading master is now master@127.0.0.1:5051", "exit_code", 1)
	})
	disconnected := logLines(func(l *slog.Logger) {
		l.Warn("disconnected from ZooKeeper; reconnecting", "session_id", "0x3")
		l.Info("reconnected to ZooKeeper", "session_id", "0x3", "disconnected_for", "12ms")
	})
	report := func(logs ...string) MigrationReport {
		r := MigrationReport{Completed: true, DigestsEqual: true, DirectWrites: 1, ExpectedLeaderChanges: 1, Linearizable: "Ok",
			LeaderChanges: []leaderChange{{At: time.Now(), From: "a-master-1", To: "b-master-1", Step: "3-masters-off-a", Planned: true}}}
		for i, l := range logs {
			r.Mesos.scanMesosLog(fmt.Sprintf("p%d", i), strings.NewReader(l+"mesos-sim: not JSON\n"))
		}
		return r
	}
	if r := report(clean, disconnected); !r.OK() || r.Mesos.Disconnects != 1 {
		t.Fatalf("clean logs with a reconnect: OK %v, %+v", r.OK(), r.Mesos)
	}
	for name, logs := range map[string]string{"server expiry": expired, "client gave up": gaveUp, "exit": exited} {
		r := report(clean, logs)
		if r.OK() || r.Mesos.Expired+r.Mesos.Exits != 1 || len(r.Mesos.Examples) != 1 {
			t.Errorf("%s: OK %v, %+v; want FAIL counting it once", name, r.OK(), r.Mesos)
		}
	}
	r := report(clean)
	r.LeaderChanges[0].Planned = false
	if r.OK() || r.Unplanned() != 1 {
		t.Errorf("an unplanned leader change passed: %+v", r)
	}
	var out bytes.Buffer
	printMigrationReport(&out, report(clean, expired))
	if !strings.Contains(out.String(), "sessions expired             1") || !strings.Contains(out.String(), "verdict                      FAIL") {
		t.Errorf("report:\n%s", out.String())
	}
}

// TestFlipPausesFromProxyLogs: the write pause at a flip is read from the
// proxies' "flip done" lines (slog JSON, durations in nanoseconds): the
// longest over proxies, per flip.
func TestFlipPausesFromProxyLogs(t *testing.T) {
	var b bytes.Buffer
	l := slog.New(slog.NewJSONHandler(&b, nil))
	l.Info("flip done", "epoch", 1, "pause", 250*time.Millisecond)
	l.Info("session flipped")
	l.Info("flip done", "epoch", 2, "pause", 90*time.Millisecond)
	got := flipPauses(&b)
	if len(got) != 2 || got[0] != 250*time.Millisecond || got[1] != 90*time.Millisecond {
		t.Fatalf("pauses %v", got)
	}
}
