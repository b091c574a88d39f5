// Package czk is a small Go binding of ZooKeeper's C client library
// (libzookeeper_mt, the library Apache Mesos links), used by the Mesos
// emulator so that its reconnect, session and expiry behaviour is the C
// client's own and not a Go client's.
//
// Only the asynchronous C API is called, as Mesos does: every call queues a
// request and returns at once, and its completion runs on the C client's
// completion thread, which hands the result to the waiting goroutine through
// a runtime/cgo.Handle and a buffered channel. Watch and session events
// arrive the same way on the handle's watcher and are queued for the owner
// (Conn.Notify, Conn.Events); nothing in a callback blocks.
//
// Usage:
//
//	czk.Quiet() // no C client log lines
//	c, err := czk.Dial("127.0.0.1:2181/mesos", 10*time.Second)
//	defer c.Close()
//	for ev := range ... { <-c.Notify(); evs := c.Events() }
//	path, err := c.Create(ctx, "/mesos/json.info_", data, czk.EphemeralSequential, false)
//	kids, err := c.Children(ctx, "/mesos", true) // and a child watch
//
// Importing this package requires cgo and libzookeeper-mt-dev; the
// zk-migrate binary does not import it (see SPEC.md, "The Mesos emulator").
package czk
