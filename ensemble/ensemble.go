// Package ensemble is zk-migrate's vocabulary for the two ZooKeeper
// ensembles of a migration: the source (A, the ensemble Mesos runs on
// today, migration.yaml's source_zk, --source) and the target (B,
// target_zk, --target). The proxy, the control plane, membership and the
// replicator name them with these values instead of bare strings.
//
// Usage:
//
//	primary, err := ensemble.Parse("target") // ensemble.Target
//	primary.Other()                          // ensemble.Source
//	primary.Flag()                           // "target"
package ensemble

import "fmt"

// Name names one of the two ensembles. Its value is the short form the
// control plane records and gossips ("A" or "B"); Flag gives the long form
// the command line uses.
type Name string

const (
	// Source is the ensemble being migrated from (A).
	Source Name = "A"
	// Target is the ensemble being migrated to (B).
	Target Name = "B"
)

// Names lists both ensembles, source first.
var Names = [2]Name{Source, Target}

// Parse accepts the long form ("source", "target") or the short one ("A",
// "B"; either case).
func Parse(s string) (Name, error) {
	switch s {
	case "source", "A", "a":
		return Source, nil
	case "target", "B", "b":
		return Target, nil
	}
	return "", fmt.Errorf("ensemble %q: want source or target (or A or B)", s)
}

// Valid reports whether n is Source or Target.
func (n Name) Valid() bool { return n == Source || n == Target }

// Other is the other ensemble.
func (n Name) Other() Name {
	if n == Target {
		return Source
	}
	return Target
}

// Flag is the long form, as in --source/--target and --primary.
func (n Name) Flag() string {
	switch n {
	case Source:
		return "source"
	case Target:
		return "target"
	}
	return string(n)
}

// Index is 0 for Source and 1 for Target, for arrays of per-ensemble
// state.
func (n Name) Index() int {
	if n == Target {
		return 1
	}
	return 0
}

// String is the short form.
func (n Name) String() string { return string(n) }
