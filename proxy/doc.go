// Package proxy is zk-migrate's ZooKeeper sidecar proxy: a server that
// ZooKeeper clients cannot tell from a ZooKeeper server, relaying each
// session to an upstream ensemble and moving it to another server of the
// ensemble when the one it is on fails.
//
// Usage:
//
//	srv, err := proxy.New(proxy.Config{Upstream: []string{"zk1:2181", "zk2:2181", "zk3:2181"},
//		Metrics: proxy.NewMetrics(prometheus.DefaultRegisterer)})
//	if err != nil { ... }
//	go srv.ListenAndServe("127.0.0.1:2181")
//	defer srv.Close()
//
// Two-ensemble mode (Config.Secondary set): every client session also has a
// shadow session on the secondary ensemble, owned by one goroutine per
// shadow (counted in the server's wait group), and every write the primary
// acknowledges is mirrored there as the state of the paths it touched.
//
//	srv, err := proxy.New(proxy.Config{Upstream: a, Secondary: b, StateDir: "/var/lib/zk-migrate/proxy"})
//
// Each client connection is owned by one goroutine (reading requests); its
// session adds a client writer (the only goroutine writing to the client),
// a supervisor (pings, liveness, re-attach, and expiry of a client silent
// for its session timeout) and one reader per upstream connection.
// Session.run waits for all of them, and Server.Close waits for every
// connection. Config documents the per-session and per-connection limits.
// SPEC.md describes the protocol decisions.
package proxy
