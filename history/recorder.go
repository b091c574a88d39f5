package history

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"sort"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
)

// Recorder collects operations from concurrent clients. Its methods are
// safe for concurrent use.
type Recorder struct {
	start time.Time
	mu    sync.Mutex
	ops   []porcupine.Operation
	open  int
}

// NewRecorder starts a history; its clock is monotonic from now.
func NewRecorder() *Recorder { return &Recorder{start: time.Now()} }

func (r *Recorder) now() int64 { return int64(time.Since(r.start)) }

// Pending is an operation whose answer has not come yet.
type Pending struct {
	r      *Recorder
	client int
	in     Input
	call   int64
	done   bool
}

// Begin records the call of in by client (a small integer naming the
// session that issues it); call End on the result with the answer.
func (r *Recorder) Begin(client int, in Input) *Pending {
	r.mu.Lock()
	r.open++
	r.mu.Unlock()
	return &Pending{r: r, client: client, in: in, call: r.now()}
}

// End records the answer. An Unknown answer is recorded as returning after
// every other operation (it may take effect at any later moment).
func (p *Pending) End(out Output) {
	if p.done {
		return
	}
	p.done = true
	ret := p.r.now()
	if out.Code == Unknown {
		ret = math.MaxInt64
	}
	p.r.mu.Lock()
	defer p.r.mu.Unlock()
	p.r.open--
	p.r.ops = append(p.r.ops, porcupine.Operation{ClientId: p.client, Input: p.in, Call: p.call, Output: out, Return: ret})
}

// Init records what path is before the workload; call it before any
// operation on path begins.
func (r *Recorder) Init(path string, exists bool, version int32, data string) {
	r.instant(Input{Kind: Init, Path: path, Exists: exists, Version: version, Data: data})
}

// Final records a read of path made after every writer stopped.
func (r *Recorder) Final(path string, exists bool, version int32, data string) {
	r.instant(Input{Kind: Read, Path: path, Exists: exists, Version: version, Data: data})
}

func (r *Recorder) instant(in Input) {
	t := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ops = append(r.ops, porcupine.Operation{ClientId: 0, Input: in, Call: t, Output: Output{}, Return: t})
}

// Stats counts the recorded operations by outcome.
func (r *Recorder) Stats() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]int{}
	for _, op := range r.ops {
		in, o := op.Input.(Input), op.Output.(Output)
		if in.Kind == Init || in.Kind == Read {
			continue
		}
		out[fmt.Sprintf("%s %s", in.Kind, o.Code)]++
	}
	return out
}

// Operations returns a copy of the history.
func (r *Recorder) Operations() []porcupine.Operation {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]porcupine.Operation(nil), r.ops...)
}

// Check checks the history against Model within timeout. It refuses a
// history with calls still open (a client that has not stopped), since
// their outcome would be missing. When visualize is not empty and the
// history is not linearizable, porcupine's HTML view of it is written
// there.
func (r *Recorder) Check(timeout time.Duration, visualize string) (porcupine.CheckResult, error) {
	r.mu.Lock()
	open := r.open
	r.mu.Unlock()
	if open != 0 {
		return porcupine.Unknown, fmt.Errorf("history: %d operations still open: stop every client before checking", open)
	}
	m := Model.ToModel()
	res, info := porcupine.CheckOperationsVerbose(m, r.Operations(), timeout)
	if res == porcupine.Illegal && visualize != "" {
		if err := porcupine.VisualizePath(m, info, visualize); err != nil {
			return res, fmt.Errorf("history: writing %s: %w", visualize, err)
		}
	}
	return res, nil
}

// Since returns the recorder's clock (nanoseconds since NewRecorder), the
// time base of every Call and Return, to place other events on it.
func (r *Recorder) Since() int64 { return r.now() }

// WriteJSON writes the history, one operation a line in call order, for
// reading a failure.
func (r *Recorder) WriteJSON(w io.Writer) error {
	ops := r.Operations()
	sort.Slice(ops, func(i, j int) bool { return ops[i].Call < ops[j].Call })
	enc := json.NewEncoder(w)
	for _, op := range ops {
		line := struct {
			Client       int
			Call, Return int64
			In           Input
			Out          Output
			Text         string
		}{op.ClientId, op.Call, op.Return, op.Input.(Input), op.Output.(Output), Model.DescribeOperation(op.Input, op.Output)}
		if err := enc.Encode(line); err != nil {
			return err
		}
	}
	return nil
}
