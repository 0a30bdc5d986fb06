#!/bin/bash
# Debian's docker-registry (distribution 2.8) on 127.0.0.1:5055, no auth, its data under DIR.
# Needs the Debian packages docker-registry and curl. Stop it by the pid in DIR/registry.pid.
# Usage: start-registry.sh DIR
set -euo pipefail
R=${1:?usage: start-registry.sh DIR}
for tool in docker-registry:docker-registry curl:curl; do
  command -v "${tool%%:*}" >/dev/null || { echo "start-registry.sh: ${tool%%:*} not found: install the Debian package ${tool#*:}" >&2; exit 3; }
done
mkdir -p "$R/data"
cat > "$R/config.yml" <<YML
version: 0.1
log: {level: info, fields: {service: registry}}
storage:
  cache: {blobdescriptor: inmemory}
  filesystem: {rootdirectory: $R/data}
  delete: {enabled: true}
http:
  addr: 127.0.0.1:5055
  headers: {X-Content-Type-Options: [nosniff]}
YML
docker-registry serve "$R/config.yml" > "$R/registry.log" 2>&1 &
echo $! > "$R/registry.pid"
for _ in $(seq 300); do   # 30 s
  curl -s -o /dev/null http://127.0.0.1:5055/v2/ && { echo "registry ready on 127.0.0.1:5055 pid=$(cat "$R/registry.pid")"; exit 0; }
  kill -0 "$(cat "$R/registry.pid")" 2>/dev/null || { echo "start-registry.sh: the registry exited (is 127.0.0.1:5055 taken?):" >&2; tail -20 "$R/registry.log" >&2; exit 1; }
  sleep 0.1
done
echo "start-registry.sh: no answer on 127.0.0.1:5055 within 30 s" >&2; kill "$(cat "$R/registry.pid")" 2>/dev/null; exit 1
