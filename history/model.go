package history

import (
	"fmt"

	"github.com/anishathalye/porcupine"
)

// Kind is what an operation does.
type Kind int

// The operations of the model.
const (
	// Init states what a znode is before the workload (recorded first).
	Init Kind = iota
	// Create creates the znode with Data.
	Create
	// Set writes Data if Version matches (-1: any).
	Set
	// Delete deletes the znode if Version matches (-1: any).
	Delete
	// Read is a read made when no write was in flight.
	Read
)

func (k Kind) String() string {
	return [...]string{"init", "create", "set", "delete", "read"}[k]
}

// Code is the outcome of an operation as the client saw it.
type Code int

// Outcomes.
const (
	OK Code = iota
	NoNode
	NodeExists
	BadVersion
	// Unknown: the reply never came (connection lost, timed out); the
	// write may have happened or not.
	Unknown
)

func (c Code) String() string {
	return [...]string{"ok", "NONODE", "NODEEXISTS", "BADVERSION", "unknown"}[c]
}

// Input is an operation's request. For Init and Read, Exists, Version and
// Data describe the znode observed.
type Input struct {
	Kind    Kind
	Path    string
	Data    string
	Version int32
	Exists  bool
}

// Output is an operation's answer: for a successful Set the new version.
type Output struct {
	Code    Code
	Version int32
}

// Znode is the model's state of one znode. Known is false until the
// znode's Init operation.
type Znode struct {
	Known   bool
	Exists  bool
	Version int32
	Data    string
}

func (z Znode) String() string {
	switch {
	case !z.Known:
		return "?"
	case !z.Exists:
		return "absent"
	}
	return fmt.Sprintf("v%d %q", z.Version, z.Data)
}

// apply is the sequential specification: what in does to z.
func apply(z Znode, in Input) (Znode, Output) {
	switch in.Kind {
	case Create:
		if z.Exists {
			return z, Output{Code: NodeExists}
		}
		return Znode{Known: true, Exists: true, Data: in.Data}, Output{Code: OK}
	case Set:
		switch {
		case !z.Exists:
			return z, Output{Code: NoNode}
		case in.Version != -1 && in.Version != z.Version:
			return z, Output{Code: BadVersion}
		}
		n := Znode{Known: true, Exists: true, Version: z.Version + 1, Data: in.Data}
		return n, Output{Code: OK, Version: n.Version}
	case Delete:
		switch {
		case !z.Exists:
			return z, Output{Code: NoNode}
		case in.Version != -1 && in.Version != z.Version:
			return z, Output{Code: BadVersion}
		}
		return Znode{Known: true}, Output{Code: OK}
	}
	return z, Output{Code: OK}
}

// step returns every state z can be in after in answered out.
func step(state, input, output any) []any {
	z, in, out := state.(Znode), input.(Input), output.(Output)
	switch in.Kind {
	case Init:
		return []any{Znode{Known: true, Exists: in.Exists, Version: in.Version, Data: in.Data}}
	case Read:
		if z.Known && z.Exists == in.Exists && (!in.Exists || z.Version == in.Version && z.Data == in.Data) {
			return []any{z}
		}
		return nil
	}
	if !z.Known {
		return nil
	}
	next, want := apply(z, in)
	if out.Code == Unknown {
		if want.Code == OK {
			return []any{z, next}
		}
		return []any{z}
	}
	if want != out {
		return nil
	}
	return []any{next}
}

// Model is the znode register model, partitioned by path.
var Model = porcupine.NondeterministicModel{
	Partition: func(ops []porcupine.Operation) [][]porcupine.Operation {
		byPath := map[string][]porcupine.Operation{}
		var order []string
		for _, op := range ops {
			p := op.Input.(Input).Path
			if _, ok := byPath[p]; !ok {
				order = append(order, p)
			}
			byPath[p] = append(byPath[p], op)
		}
		out := make([][]porcupine.Operation, 0, len(order))
		for _, p := range order {
			out = append(out, byPath[p])
		}
		return out
	},
	Init: func() []any { return []any{Znode{}} },
	Step: step,
	DescribeOperation: func(input, output any) string {
		in, out := input.(Input), output.(Output)
		switch in.Kind {
		case Init, Read:
			if !in.Exists {
				return fmt.Sprintf("%s %s: absent", in.Kind, in.Path)
			}
			return fmt.Sprintf("%s %s: v%d %q", in.Kind, in.Path, in.Version, in.Data)
		case Set:
			if out.Code == OK {
				return fmt.Sprintf("set %s %q @%d -> v%d", in.Path, in.Data, in.Version, out.Version)
			}
			return fmt.Sprintf("set %s %q @%d -> %s", in.Path, in.Data, in.Version, out.Code)
		case Delete:
			return fmt.Sprintf("delete %s @%d -> %s", in.Path, in.Version, out.Code)
		}
		return fmt.Sprintf("%s %s %q -> %s", in.Kind, in.Path, in.Data, out.Code)
	},
	DescribeState: func(state any) string { return state.(Znode).String() },
}
