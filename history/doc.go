// Package history records what ZooKeeper clients did to a set of znodes
// and checks the record for linearizability with porcupine
// (github.com/anishathalye/porcupine).
//
// The model is a znode as a versioned register: it exists or not, and when
// it exists it has a version and data. Create succeeds only on a missing
// znode (version 0), setData and delete with version -1 always succeed on
// an existing znode and with any other version only when it equals the
// znode's, and a successful setData returns the next version. A write
// whose outcome is unknown (the connection was lost before the reply) may
// or may not have happened; the model keeps both possibilities.
//
// Reads are not part of the model while writes run: a sync followed by a
// getData is not a linearizable read in ZooKeeper 3.8 (DESIGN-BRIEF,
// "Checking linearizability"). Record a read only once every writer has
// stopped (Recorder.Final), where it is exact. A duplicated or lost write
// shows up as a version that does not follow, and two ensembles accepting
// writes at once as two conditional writes that both succeed on one
// version: both fail the check.
//
// Usage:
//
//	rec := history.NewRecorder()
//	rec.Init("/reg/r0", true, st.Version, data)     // before the workload
//	op := rec.Begin(client, history.Input{Kind: history.Set, Path: p, Data: d, Version: v})
//	st, err := conn.Set(p, []byte(d), v)
//	op.End(history.SetResult(st.Version, err))      // or history.Unknown
//	...
//	rec.Final("/reg/r0", exists, version, data)      // after the workload
//	res, info := rec.Check(time.Minute)              // porcupine.Ok?
package history
