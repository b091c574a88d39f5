#!/usr/bin/env bash
# Installs what zk-migrate's tests and sandbox need on a Debian machine:
# ZooKeeper 3.8 (servers, Java CLI), its C client CLI, kazoo, Prometheus
# (deploy/ tests run prometheus and promtool), Chromium (the dashboard's
# browser test), OpenSSH's server (the systemd deployer's tests), and Go
# modules.
set -euo pipefail
need=()
[ -f /usr/share/java/zookeeper.jar ] || need+=(zookeeper)
[ -x /usr/lib/zookeeper/bin/cli_mt ] || need+=(zookeeper-bin)
/usr/bin/python3 -c 'import kazoo' 2>/dev/null || need+=(python3-kazoo)
[ -f /usr/include/zookeeper/zookeeper.h ] || need+=(libzookeeper-mt-dev)
command -v java >/dev/null || need+=(default-jre-headless)
command -v gcc >/dev/null || need+=(gcc)
command -v promtool >/dev/null || need+=(prometheus)
command -v chromium >/dev/null || need+=(chromium) # the dashboard's browser test
[ -x /usr/sbin/sshd ] || need+=(openssh-server)   # deployer/: the systemd deployer is tested over real SSH
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  echo "installing Debian packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
command -v go >/dev/null || { echo "Go is required (https://go.dev/dl); put it on PATH" >&2; exit 1; }
go mod download
echo "deps: ok (zookeeper $(dpkg-query -W -f='${Version}' zookeeper 2>/dev/null || echo '?'), $(go version | cut -d' ' -f3))"
