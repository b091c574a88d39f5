package control

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

var rewrite = flag.Bool("rewrite", false, "rewrite the expected output of testdata/*.txt")

// TestTranscripts runs every testdata/*.txt: each line is a command, and
// the "> " lines after it are what it must produce (the result, then the
// migration's state). `go test ./control -rewrite` regenerates them.
//
// Command lines: KIND MIGRATION [key=value...] with keys by, step (a step
// number or a phase: p1..p6, flip, done, none), epoch, proxy, proxies
// (comma-separated), error, approval (true/false for create), and for
// create source, target (ensembles) and paths (comma-separated).
func TestTranscripts(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.txt")
	if len(files) == 0 {
		t.Fatal("no transcripts")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			s := NewState()
			var out strings.Builder
			clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			var want, got []string
			lines := strings.Split(strings.TrimRight(string(raw), "\n"), "\n")
			for i := 0; i < len(lines); i++ {
				line := lines[i]
				if strings.HasPrefix(line, ">") {
					continue
				}
				out.WriteString(line + "\n")
				if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
					continue
				}
				var exp []string
				for j := i + 1; j < len(lines) && strings.HasPrefix(lines[j], ">"); j++ {
					exp = append(exp, lines[j])
				}
				clock = clock.Add(time.Second)
				c, err := parseCommand(line, clock)
				var res []string
				if err != nil {
					res = []string{"> parse error: " + err.Error()}
				} else {
					res = runCommand(s, c)
				}
				for _, r := range res {
					out.WriteString(r + "\n")
				}
				want = append(want, fmt.Sprintf("%s\n%s", line, strings.Join(exp, "\n")))
				got = append(got, fmt.Sprintf("%s\n%s", line, strings.Join(res, "\n")))
			}
			if *rewrite {
				if err := os.WriteFile(f, []byte(out.String()), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			for k := range got {
				if got[k] != want[k] {
					t.Fatalf("%s, command %d:\n got: %s\nwant: %s\n(run go test ./control -rewrite if the change is intended)", f, k+1, got[k], want[k])
				}
			}
		})
	}
}

func runCommand(s *State, c Command) []string {
	res := "> ok"
	if err := s.Apply(c, uint64(len(s.Audit)+1)); err != nil {
		res = "> error: " + err.Error()
	}
	m := s.Migrations[c.Migration]
	if m == nil {
		return []string{res}
	}
	st := fmt.Sprintf("> step=%s status=%s primary=%s epoch=%d", m.Step, m.Status, m.Primary, m.Epoch)
	if m.Paused {
		st += " paused"
	}
	if m.Status == StatusRollingBack {
		st += " rollback-to=" + m.RollbackTo.String()
		if m.Undone != 0 {
			st += " undone=" + m.Undone.String()
		}
	}
	if m.LastError != "" {
		st += " last-error=" + strconv.Quote(m.LastError)
	}
	if m.Sync != (SyncState{}) {
		st += fmt.Sprintf(" sync{running=%v node=%s copied=%v stopped=%q}", m.Sync.Running, m.Sync.Node, m.Sync.Copied, m.Sync.Stopped)
	}
	if f := m.Flip; f != nil {
		st += fmt.Sprintf(" flip{epoch=%d expected=%v acked=%v fenced=%v done=%v}", f.Epoch, f.Expected, f.Acked, f.Fenced, f.Done)
	}
	return []string{res, st}
}

func parseStep(v string) (Step, error) {
	switch v {
	case "none":
		return StepNone, nil
	case "flip":
		return StepFlip, nil
	case "done":
		return StepDone, nil
	}
	if p, ok := strings.CutPrefix(v, "p"); ok {
		n, err := strconv.Atoi(p)
		if err != nil {
			return 0, err
		}
		return StepForPhase(n)
	}
	n, err := strconv.Atoi(v)
	return Step(n), err
}

func parseCommand(line string, now time.Time) (Command, error) {
	f := strings.Fields(line)
	if len(f) < 2 {
		return Command{}, fmt.Errorf("want KIND MIGRATION [key=value...]")
	}
	c := Command{Kind: Kind(f[0]), Migration: f[1], By: "operator", Time: now}
	approval := false
	// Each migration has its own ensembles unless the line names them.
	cfg := &MigrationConfig{SourceZK: "a-" + f[1] + ":2181", TargetZK: "b-" + f[1] + ":2181"}
	for _, kv := range f[2:] {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return c, fmt.Errorf("%q is not key=value", kv)
		}
		var err error
		switch k {
		case "by":
			c.By = v
		case "step":
			c.Step, err = parseStep(v)
		case "epoch":
			c.Epoch, err = strconv.ParseInt(v, 10, 64)
		case "proxy":
			c.Proxy = v
		case "proxies":
			c.Proxies = strings.Split(v, ",")
		case "error":
			c.Error = v
		case "event":
			c.Event = v
		case "node":
			c.Node = v
		case "approval":
			approval = v == "true"
		case "source":
			cfg.SourceZK = v
		case "target":
			cfg.TargetZK = v
		case "paths":
			cfg.Paths = strings.Split(v, ",")
		default:
			return c, fmt.Errorf("unknown key %q", k)
		}
		if err != nil {
			return c, fmt.Errorf("%s: %w", k, err)
		}
	}
	if c.Kind == CmdCreate {
		cfg.RequireApproval = approval
		c.Config = cfg
	}
	return c, nil
}
