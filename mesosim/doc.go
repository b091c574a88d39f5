// Package mesosim emulates an Apache Mesos cluster (masters, agents, a
// framework) whose ZooKeeper side is faithful: every process reaches
// ZooKeeper through ZooKeeper's own C client library (package czk over
// libzookeeper_mt, as Mesos links it), with Mesos' znodes, watches,
// session handling and exit conditions. It exists so that zk-migrate's
// proxies and migration phases are exercised by the client behaviour they
// must survive. Real Mesos cannot be installed here; nothing else of Mesos
// (containers, resources, offers, libprocess) is emulated beyond what the
// migration observes through the operator API.
//
// What each process does in ZooKeeper, as Mesos does it:
//
//   - A master holds three sessions, like Mesos' contender, detector and
//     replicated-log groups. It creates an ephemeral sequential
//     <path>/json.info_NNNNNNNNNN holding its MasterInfo as JSON, and an
//     ephemeral sequential <path>/log_replicas/NNNNNNNNNN holding its log
//     replica's UPID. The lowest json.info_ leads.
//   - A session disconnected for the whole session timeout is given up
//     (Mesos' GroupProcess timer), as is one the server expired. A leader
//     whose candidacy ends, or that sees another leader, exits 1 ("Lost
//     leadership... committing suicide!"); a follower contends again.
//   - The elected master recovers its registry (maintenance, drains, gone
//     agents) from --quorum log replicas within --registry_fetch_timeout,
//     and every registry write needs --quorum replicas within
//     --registry_store_timeout; otherwise it exits 1. A master whose replica
//     is beyond the 2*quorum-1 oldest in log_replicas exits 1.
//   - Agents and the framework detect the leader with getChildren and a
//     watch, read the lowest json.info_, and re-register or re-subscribe
//     with each new leader over HTTP at the MasterInfo's address.
//
// Usage (the cmd/mesos-sim binary wraps these):
//
//	ln, _ := net.Listen("tcp", "127.0.0.1:5050")
//	zk, _ := mesosim.ParseZKURL("zk://127.0.0.1:2181/mesos")
//	m, _ := mesosim.NewMaster(mesosim.MasterConfig{ZK: zk, Quorum: 2, IP: "127.0.0.1", Listener: ln})
//	err := m.Run(ctx) // *ExitError: exit(1) without closing the sessions
//
// Agents (NewAgent) and the framework (NewFramework) run the same way.
// See SPEC.md, "The Mesos emulator", for what is simplified.
package mesosim
