package control

import (
	"fmt"
	"github.com/zk-migrate/zk-migrate/ensemble"
	"io"
	"strings"
	"time"
)

// Approval is one operator's approval of a step.
type Approval struct {
	Step string    `json:"step"`
	By   string    `json:"by"`
	Time time.Time `json:"time"`
	// Waited is how long the step waited for it.
	Waited time.Duration `json:"waited_ns"`
}

// StepReport is one step's history in a migration. A step entered again
// (after a rollback) adds to its times.
type StepReport struct {
	Step      string    `json:"step"`
	Entered   time.Time `json:"entered"`
	Succeeded time.Time `json:"succeeded,omitempty"`
	// Duration is the time the step worked: from entering it to its
	// success, without the time it waited for approval (Waiting).
	Duration time.Duration `json:"duration_ns,omitempty"`
	Waiting  time.Duration `json:"waiting_for_approval_ns,omitempty"`
	Failures int           `json:"failures"`
	// Failed: the step's latest outcome is a failure (LastError).
	Failed    bool       `json:"failed,omitempty"`
	LastError string     `json:"last_error,omitempty"`
	Approvals []Approval `json:"approvals,omitempty"`
	// Approver is the last approval's author.
	Approver string `json:"approved_by,omitempty"`

	runStart     time.Time // the current run: entered at, waiting so far
	runWait      time.Duration
	pendingSince time.Time // awaiting approval since (zero: not waiting)
}

// Report summarizes a migration from its audit trail (post-migration
// report).
type Report struct {
	Migration string        `json:"migration"`
	Status    Status        `json:"status"`
	Primary   ensemble.Name `json:"primary"`
	LastError string        `json:"last_error,omitempty"`
	Started   time.Time     `json:"started"`
	Finished  time.Time     `json:"finished,omitempty"`
	Duration  time.Duration `json:"duration_ns,omitempty"`
	// Waiting is the total time steps waited for approval.
	Waiting   time.Duration `json:"waiting_for_approval_ns,omitempty"`
	Steps     []StepReport  `json:"steps"`
	Approvals []Approval    `json:"approvals"`
	Rollbacks int           `json:"rollbacks"`
	Refused   int           `json:"refused_commands"`
	Flip      *Flip         `json:"flip,omitempty"`
}

// stepOf reads "step=NAME" from an audit entry's detail.
func stepOf(detail string) string {
	for _, f := range strings.Fields(detail) {
		if v, ok := strings.CutPrefix(f, "step="); ok {
			return v
		}
	}
	return ""
}

// MakeReport builds the report of migration id, or nil if it is unknown.
func MakeReport(s *State, id string) *Report {
	m := s.Migrations[id]
	if m == nil {
		return nil
	}
	r := &Report{Migration: id, Status: m.Status, Primary: m.Primary, Flip: m.Flip, LastError: m.LastError, Approvals: []Approval{}}
	byStep := map[string]int{}
	step := func(name string) *StepReport {
		if i, ok := byStep[name]; ok {
			return &r.Steps[i]
		}
		r.Steps = append(r.Steps, StepReport{Step: name})
		byStep[name] = len(r.Steps) - 1
		return &r.Steps[len(r.Steps)-1]
	}
	enter := func(name string, t time.Time) {
		sr := step(name)
		if sr.Entered.IsZero() {
			sr.Entered = t
		}
		sr.runStart, sr.runWait, sr.pendingSince = t, 0, t
	}
	cur := ""
	for _, e := range s.Audit {
		if e.Migration != id {
			continue
		}
		failed := Kind(e.Action) == CmdStepFailed && strings.HasPrefix(e.Result, "failed")
		if e.Result != "ok" && !failed {
			r.Refused++
			continue
		}
		switch Kind(e.Action) {
		case CmdCreate:
			*r = Report{Migration: id, Status: m.Status, Primary: m.Primary, Flip: m.Flip, LastError: m.LastError, Approvals: []Approval{}}
			clear(byStep)
			cur = ""
		case CmdStart:
			r.Started = e.Time
			cur = StepDeployB.String()
			enter(cur, e.Time)
		case CmdAdvance:
			cur = stepOf(e.Detail)
			enter(cur, e.Time)
		case CmdRolledBack:
			cur = stepOf(e.Detail)
			if cur != "" && cur != StepNone.String() {
				enter(cur, e.Time)
				step(cur).pendingSince = time.Time{} // it runs again without approval
			}
		case CmdApprove:
			if cur == "" {
				continue
			}
			sr := step(cur)
			a := Approval{Step: cur, By: e.By, Time: e.Time}
			if !sr.pendingSince.IsZero() {
				a.Waited = e.Time.Sub(sr.pendingSince)
				sr.runWait += a.Waited
				sr.Waiting += a.Waited
				r.Waiting += a.Waited
				sr.pendingSince = time.Time{}
			}
			sr.Approvals = append(sr.Approvals, a)
			sr.Approver = e.By
			r.Approvals = append(r.Approvals, a)
		case CmdStepRunning:
			if sr := step(stepOf(e.Detail)); !sr.pendingSince.IsZero() {
				sr.pendingSince = time.Time{} // no approval was needed
			}
		case CmdStepFailed:
			sr := step(stepOf(e.Detail))
			sr.Failures++
			sr.Failed = true
			sr.LastError = strings.TrimPrefix(strings.TrimPrefix(e.Result, "failed"), ": ")
		case CmdStepSucceeded:
			name := stepOf(e.Detail)
			sr := step(name)
			sr.Failed = false
			sr.Succeeded = e.Time
			if !sr.runStart.IsZero() {
				sr.Duration += e.Time.Sub(sr.runStart) - sr.runWait
				sr.runStart = time.Time{}
			}
			if name == StepRemoveA.String() {
				r.Finished = e.Time
				r.Duration = e.Time.Sub(r.Started)
			}
		case CmdRollback:
			r.Rollbacks++
		}
	}
	return r
}

// Print writes the report for people.
func (r *Report) Print(w io.Writer) {
	fmt.Fprintf(w, "migration %s: %s, primary ensemble %s\n", r.Migration, r.Status, r.Primary)
	if r.Status == StatusFailed && r.LastError != "" {
		fmt.Fprintf(w, "FAILED: %s\n", r.LastError)
	}
	if !r.Finished.IsZero() {
		fmt.Fprintf(w, "started %s, finished %s (%v, of which %v waiting for approval)\n", r.Started.Format(time.RFC3339),
			r.Finished.Format(time.RFC3339), r.Duration.Round(time.Second), r.Waiting.Round(time.Second))
	}
	fmt.Fprintf(w, "  %-20s %10s %12s  %s\n", "STEP", "WORKED", "WAITED", "NOTES")
	for _, s := range r.Steps {
		took := "-"
		if s.Duration > 0 {
			took = s.Duration.Round(time.Millisecond).String()
		}
		waited := "-"
		if s.Waiting > 0 {
			waited = s.Waiting.Round(time.Millisecond).String()
		}
		var notes []string
		if s.Failed {
			notes = append(notes, "FAILED: "+s.LastError)
		}
		if s.Failures > 0 {
			notes = append(notes, fmt.Sprintf("%d failure(s)", s.Failures))
		}
		for _, a := range s.Approvals {
			notes = append(notes, "approved by "+a.By)
		}
		fmt.Fprintf(w, "  %-20s %10s %12s  %s\n", s.Step, took, waited, strings.Join(notes, ", "))
	}
	if len(r.Approvals) > 0 {
		fmt.Fprintln(w, "approvals:")
		for _, a := range r.Approvals {
			fmt.Fprintf(w, "  %s  %-20s by %s after %v\n", a.Time.Format(time.RFC3339), a.Step, a.By, a.Waited.Round(time.Millisecond))
		}
	}
	if r.Flip != nil {
		fmt.Fprintf(w, "flip: epoch %d, %d proxies acknowledged, %d fenced %v\n", r.Flip.Epoch, len(r.Flip.Acked), len(r.Flip.Fenced), r.Flip.Fenced)
	}
	fmt.Fprintf(w, "rollbacks %d, refused commands %d\n", r.Rollbacks, r.Refused)
}
