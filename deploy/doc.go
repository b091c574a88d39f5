// Package deploy holds what an operator installs beside the zk-migrate
// binary, and the tests that keep it true to the binary:
//
//   - grafana/: dashboards generated from Go code by grafana/gen
//     (`make dashboards`; `make verify-dashboards` fails when they are stale);
//   - prometheus/: alert rules, their promtool unit tests (rules_test.yml)
//     and an example scrape configuration with the job names both use;
//   - systemd/: the proxy's unit file, and example Mesos master and agent
//     units that mesos.deployer.kind systemd drives over SSH.
//
// The tests start real ZooKeeper servers, the zk-migrate control, proxy
// and sync binaries and a real Prometheus (Debian's prometheus package),
// and check that every metric a dashboard panel or an alert rule names is
// one the binaries export, that the rules pass promtool, and that real
// faults (a Mesos leader failing over, a lost quorum, a killed proxy, sync
// or control node) fire their alerts.
package deploy
