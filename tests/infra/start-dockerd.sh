#!/bin/bash
# A Docker engine of its own: Debian's dockerd on a private socket, data and state under DIR; no
# bridge, no iptables (containers have only `lo` unless they use host networking). Needs root and
# the Debian packages docker.io and curl. Stop it by the pid in DIR/docker.pid, then
# `umount DIR/docker-exec/netns/default`.
# Usage: start-dockerd.sh DIR      (DIR short: a socket path has at most 107 bytes)
set -euo pipefail
R=${1:?usage: start-dockerd.sh DIR}
for tool in dockerd:docker.io curl:curl; do
  command -v "${tool%%:*}" >/dev/null || { echo "start-dockerd.sh: ${tool%%:*} not found: install the Debian package ${tool#*:}" >&2; exit 3; }
done
mkdir -p "$R/docker-data" "$R/docker-exec"
dockerd --host "unix://$R/docker.sock" --data-root "$R/docker-data" --exec-root "$R/docker-exec" \
  --pidfile "$R/docker.pid" --iptables=false --ip6tables=false --bridge=none --storage-driver=overlay2 \
  > "$R/dockerd.log" 2>&1 &
pid=$!
for _ in $(seq 600); do   # 60 s
  curl -s --unix-socket "$R/docker.sock" http://x/_ping 2>/dev/null | grep -q OK && {
    echo "dockerd ready: DOCKER_HOST=unix://$R/docker.sock pid=$pid"; exit 0; }
  kill -0 $pid 2>/dev/null || { echo "start-dockerd.sh: dockerd exited:" >&2; tail -20 "$R/dockerd.log" >&2; exit 1; }
  sleep 0.1
done
echo "start-dockerd.sh: dockerd did not answer on $R/docker.sock within 60 s" >&2; tail -20 "$R/dockerd.log" >&2
kill $pid 2>/dev/null; exit 1
