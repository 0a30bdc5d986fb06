#!/bin/bash
# Stops what start-k8s.sh and start-node.sh started in STATE_DIR (kubelet, scheduler, controller
# manager, API server, etcd, by their pid files), then removes from the engine at $DOCKER_HOST the
# pod containers made since this node started (only those: the engine may be one the user has)
# and unmounts the kubelet's tmpfs volumes, so that STATE_DIR can be removed.
# Usage: DOCKER_HOST=unix:///PATH/docker.sock stop-k8s.sh STATE_DIR
S=${1:?usage: DOCKER_HOST=... stop-k8s.sh STATE_DIR}
for c in kubelet scheduler kcm apiserver etcd; do
  [ -f "$S/$c.pid" ] || continue; P=$(cat "$S/$c.pid"); kill "$P" 2>/dev/null
  for _ in $(seq 100); do kill -0 "$P" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$P" 2>/dev/null && { echo "$c ($P) still alive, SIGKILL"; kill -9 "$P"; }
  rm -f "$S/$c.pid"
done
if [ -n "${DOCKER_HOST:-}" ] && [ -f "$S/node.started" ]; then
  since=$(cat "$S/node.started")
  for id in $(docker -H "$DOCKER_HOST" ps -aq --filter label=io.kubernetes.docker.type); do
    created=$(docker -H "$DOCKER_HOST" inspect -f '{{.Created}}' "$id" 2>/dev/null) || continue
    [ "$(date -d "$created" +%s)" -ge "$since" ] && docker -H "$DOCKER_HOST" rm -f "$id" >/dev/null
  done
fi
# the kubelet leaves tmpfs mounts (secret and service account volumes) under its root dir
awk -v r="$S/kubelet-root" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount
true
