package sandbox

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// mesosEvents counts, in the JSON-line logs of the emulated Mesos
// processes (bin/mesos-sim), what the migration must never cause: a
// ZooKeeper session lost (expired by the server, or given up by the
// client after reconnecting for the session timeout, as Mesos does), a
// disconnection from ZooKeeper (the C client saw its connection drop), and
// a process exiting on an error (a master's "committing suicide", the
// quorum rule, a failed recovery).
type mesosEvents struct {
	Expired     int
	Disconnects int
	Exits       int
	// First lines of each kind, for the report ("process: message").
	Examples []string
}

// scanMesosLog adds what one process's log shows; name labels it.
func (ev *mesosEvents) scanMesosLog(name string, r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var l struct {
			Level    string `json:"level"`
			Msg      string `json:"msg"`
			Err      string `json:"err"`
			ExitCode *int   `json:"exit_code"`
		}
		if json.Unmarshal(sc.Bytes(), &l) != nil {
			continue // the C client's own lines are off (czk.Quiet); mesos-sim's stderr on exit
		}
		what := l.Msg
		if l.Err != "" {
			what += ": " + l.Err
		}
		switch {
		case l.ExitCode != nil && *l.ExitCode != 0:
			ev.Exits++
		case strings.Contains(l.Err, "ZooKeeper session expired") ||
			strings.Contains(l.Msg, "could not connect to ZooKeeper within the session timeout"):
			ev.Expired++
		case strings.Contains(l.Msg, "disconnected from ZooKeeper"):
			ev.Disconnects++
		default:
			continue
		}
		if len(ev.Examples) < 5 {
			ev.Examples = append(ev.Examples, name+": "+what)
		}
	}
}

// scanMesosLogs scans DIR/NAME.log of every named process.
func scanMesosLogs(dir string, names []string) mesosEvents {
	var ev mesosEvents
	for _, n := range names {
		f, err := os.Open(filepath.Join(dir, n+".log"))
		if err != nil {
			continue // never started
		}
		ev.scanMesosLog(n, f)
		f.Close()
	}
	return ev
}

// flipPauses reads the proxies' "flip done" log lines (JSON, pause in
// nanoseconds): how long each proxy held its clients' requests at each
// flip.
func flipPauses(r io.Reader) []time.Duration {
	var out []time.Duration
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var l struct {
			Msg   string `json:"msg"`
			Pause int64  `json:"pause"`
		}
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "flip done" {
			out = append(out, time.Duration(l.Pause))
		}
	}
	return out
}

// proxyFlipPauses reads every proxy's log: the longest pause of each flip
// (flips are numbered in order; every proxy takes part in each).
func proxyFlipPauses(dir string, names []string) ([]time.Duration, error) {
	var longest []time.Duration
	for _, n := range names {
		f, err := os.Open(filepath.Join(dir, n+".log"))
		if err != nil {
			return nil, fmt.Errorf("sandbox: %w", err)
		}
		for i, d := range flipPauses(f) {
			if i >= len(longest) {
				longest = append(longest, 0)
			}
			longest[i] = max(longest[i], d)
		}
		f.Close()
	}
	return longest, nil
}
