package history

import (
	"math"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// op builds an operation of client c over [call, ret].
func op(c int, in Input, out Output, call, ret int64) porcupine.Operation {
	return porcupine.Operation{ClientId: c, Input: in, Output: out, Call: call, Return: ret}
}

func check(t *testing.T, ops []porcupine.Operation) porcupine.CheckResult {
	t.Helper()
	return porcupine.CheckOperationsTimeout(Model.ToModel(), ops, 10*time.Second)
}

const p = "/reg/r0"

func initAt(v int32) porcupine.Operation {
	return op(0, Input{Kind: Init, Path: p, Exists: true, Version: v, Data: "init"}, Output{}, 0, 0)
}

func set(c int, data string, expect int32, out Output, call, ret int64) porcupine.Operation {
	return op(c, Input{Kind: Set, Path: p, Data: data, Version: expect}, out, call, ret)
}

func final(v int32, data string, at int64) porcupine.Operation {
	return op(0, Input{Kind: Read, Path: p, Exists: true, Version: v, Data: data}, Output{}, at, at)
}

// TestConcurrentConditionalWritesOneWins: two clients write on version 5
// at once, one succeeds, the other gets BADVERSION: linearizable.
func TestConcurrentConditionalWritesOneWins(t *testing.T) {
	ops := []porcupine.Operation{
		initAt(5),
		set(1, "a", 5, Output{Code: OK, Version: 6}, 10, 30),
		set(2, "b", 5, Output{Code: BadVersion}, 12, 25),
		set(2, "c", -1, Output{Code: OK, Version: 7}, 40, 50),
		final(7, "c", 100),
	}
	if res := check(t, ops); res != porcupine.Ok {
		t.Fatalf("%s, want Ok", res)
	}
}

// TestSplitBrainIsCaught: both conditional writes on version 5 succeed, as
// when two ensembles take writes at once (clients of two proxies that
// disagree about the primary).
func TestSplitBrainIsCaught(t *testing.T) {
	ops := []porcupine.Operation{
		initAt(5),
		set(1, "a", 5, Output{Code: OK, Version: 6}, 10, 30),
		set(2, "b", 5, Output{Code: OK, Version: 6}, 12, 25),
	}
	if res := check(t, ops); res != porcupine.Illegal {
		t.Fatalf("%s, want Illegal", res)
	}
}

// TestLostAndDuplicatedWritesAreCaught: a write acknowledged but gone at
// the end, and a write applied twice (a version gap), both fail.
func TestLostAndDuplicatedWritesAreCaught(t *testing.T) {
	lost := []porcupine.Operation{
		initAt(0),
		set(1, "a", -1, Output{Code: OK, Version: 1}, 10, 20),
		set(2, "b", -1, Output{Code: OK, Version: 2}, 30, 40),
		final(1, "a", 100),
	}
	if res := check(t, lost); res != porcupine.Illegal {
		t.Fatalf("lost write: %s, want Illegal", res)
	}
	dup := []porcupine.Operation{
		initAt(0),
		set(1, "a", -1, Output{Code: OK, Version: 1}, 10, 20),
		set(2, "b", -1, Output{Code: OK, Version: 3}, 30, 40),
	}
	if res := check(t, dup); res != porcupine.Illegal {
		t.Fatalf("duplicated write: %s, want Illegal", res)
	}
	// A version translated wrongly after a flip: the client read version
	// 1, the write with 1 is refused although nobody wrote since.
	translated := []porcupine.Operation{
		initAt(0),
		set(1, "a", -1, Output{Code: OK, Version: 1}, 10, 20),
		set(1, "b", 1, Output{Code: BadVersion}, 30, 40),
	}
	if res := check(t, translated); res != porcupine.Illegal {
		t.Fatalf("wrong BADVERSION: %s, want Illegal", res)
	}
}

// TestUnknownOutcomes: a write whose reply was lost may have happened or
// not; a delete and re-create follow the model.
func TestUnknownOutcomes(t *testing.T) {
	for _, fin := range []porcupine.Operation{final(1, "a", 100), final(2, "c", 100)} {
		ops := []porcupine.Operation{
			initAt(0),
			set(1, "a", -1, Output{Code: OK, Version: 1}, 10, 20),
			set(2, "b", 1, Output{Code: Unknown}, 30, math.MaxInt64),
			set(3, "c", -1, Output{Code: OK, Version: fin.Input.(Input).Version}, 50, 60),
			fin,
		}
		if fin.Input.(Input).Version == 1 {
			ops = ops[:3]
			ops = append(ops, fin)
		}
		if res := check(t, ops); res != porcupine.Ok {
			t.Fatalf("unknown outcome, final %v: %s, want Ok", fin.Input, res)
		}
	}
	// An unknown write that could not have matched cannot explain a
	// version step.
	ops := []porcupine.Operation{
		initAt(0),
		set(2, "b", 7, Output{Code: Unknown}, 30, math.MaxInt64),
		final(1, "b", 100),
	}
	if res := check(t, ops); res != porcupine.Illegal {
		t.Fatalf("impossible unknown write: %s, want Illegal", res)
	}
	churn := []porcupine.Operation{
		initAt(3),
		op(1, Input{Kind: Delete, Path: p, Version: 3}, Output{Code: OK}, 10, 20),
		op(2, Input{Kind: Set, Path: p, Data: "x", Version: -1}, Output{Code: NoNode}, 25, 28),
		op(1, Input{Kind: Create, Path: p, Data: "new"}, Output{Code: OK}, 30, 40),
		op(2, Input{Kind: Create, Path: p, Data: "other"}, Output{Code: NodeExists}, 45, 50),
		set(2, "y", 0, Output{Code: OK, Version: 1}, 55, 60),
		final(1, "y", 100),
	}
	if res := check(t, churn); res != porcupine.Ok {
		t.Fatalf("delete and re-create: %s, want Ok", res)
	}
}

// TestRecorderRefusesOpenCalls: checking while a client still runs would
// miss its outcome.
func TestRecorderRefusesOpenCalls(t *testing.T) {
	r := NewRecorder()
	r.Init(p, true, 0, "init")
	pend := r.Begin(1, Input{Kind: Set, Path: p, Data: "a", Version: 0})
	if _, err := r.Check(time.Second, ""); err == nil {
		t.Fatal("checked a history with an open call")
	}
	pend.End(Output{Code: OK, Version: 1})
	r.Final(p, true, 1, "a")
	if res, err := r.Check(time.Second, ""); err != nil || res != porcupine.Ok {
		t.Fatalf("%s %v, want Ok", res, err)
	}
	if s := r.Stats(); s["set ok"] != 1 {
		t.Fatalf("stats %v", s)
	}
}
