#!/bin/bash
# The node of the test cluster: kube-scheduler and a kubelet that runs pods on the Docker engine
# at $DOCKER_HOST (dockershim), node name wf-node, node IP 127.0.0.1, kubelet ports 10250/10248
# on loopback. No kube-proxy and no CNI: pods use host networking. The sandbox image
# localhost/pause:3.2 must be on that engine (docker import of the static `pause` binary).
# Needs start-k8s.sh STATE_DIR first, and root.
# Usage: KUBE_BIN=DIR DOCKER_HOST=unix:///PATH/docker.sock start-node.sh STATE_DIR
set -euo pipefail
S=${1:?usage: KUBE_BIN=DIR DOCKER_HOST=... start-node.sh STATE_DIR}; BIN=${KUBE_BIN:?set KUBE_BIN to the folder holding the kube binaries}
: "${DOCKER_HOST:?set DOCKER_HOST=unix:///PATH/docker.sock, the engine that runs the pods}"
for b in kube-scheduler kubelet; do
  [ -x "$BIN/$b" ] || { echo "start-node.sh: $BIN/$b missing: build it with build-k8s-1.20-from-debian.sh" >&2; exit 3; }
done
[ -f "$S/kubeconfig" ] || { echo "start-node.sh: $S/kubeconfig missing: run start-k8s.sh $S first" >&2; exit 3; }
date +%s > "$S/node.started"   # stop-k8s.sh removes the pod containers made from now on
"$BIN/kube-scheduler" --kubeconfig="$S/kubeconfig" --leader-elect=false --port=0 --secure-port=0 > "$S/scheduler.log" 2>&1 &
echo $! > "$S/scheduler.pid"
mkdir -p "$S/kubelet-root" "$S/kubelet-certs" "$S/kubelet-plugins"
echo 'nameserver 127.0.0.1' > "$S/resolv.conf"   # pods must not query the machine's resolver
AWS_EC2_METADATA_DISABLED=true "$BIN/kubelet" --kubeconfig="$S/kubeconfig" \
  --container-runtime=docker --docker-endpoint="$DOCKER_HOST" \
  --pod-infra-container-image=localhost/pause:3.2 \
  --root-dir="$S/kubelet-root" --cert-dir="$S/kubelet-certs" --volume-plugin-dir="$S/kubelet-plugins" \
  --hostname-override=wf-node --node-ip=127.0.0.1 \
  --address=127.0.0.1 --port=10250 --read-only-port=0 --healthz-bind-address=127.0.0.1 --healthz-port=10248 \
  --cgroup-driver=cgroupfs --cgroups-per-qos=false --enforce-node-allocatable= \
  --fail-swap-on=false --make-iptables-util-chains=false --max-pods=20 \
  --resolv-conf="$S/resolv.conf" > "$S/kubelet.log" 2>&1 &
echo $! > "$S/kubelet.pid"
sleep 1   # a kubelet that cannot start at all (port taken, engine unreachable) exits at once
for c in scheduler kubelet; do
  kill -0 "$(cat "$S/$c.pid")" 2>/dev/null || { echo "start-node.sh: $c exited:" >&2; tail -20 "$S/$c.log" >&2; exit 1; }
done
echo "node started: wait for \`kubectl --kubeconfig $S/kubeconfig get nodes\` to say Ready (~20 s)"
