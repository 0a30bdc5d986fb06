#!/bin/bash
# The control plane of a single-node Kubernetes 1.20 test cluster on loopback: etcd (Debian's
# etcd-server) on 127.0.0.1:23790/23800/23810 and the kube-apiserver (token auth, RBAC) on
# 127.0.0.1:16443, then the controller manager. The ports are fixed: one cluster per machine.
# Needs KUBE_BIN, a folder with the binaries that build-k8s-1.20-from-debian.sh makes, and the
# Debian packages etcd-server, etcd-client, kubernetes-client (kubectl), openssl and curl.
# Writes pids to STATE_DIR/*.pid and the admin kubeconfig to STATE_DIR/kubeconfig; then run
# start-node.sh STATE_DIR. stop-k8s.sh STATE_DIR stops it all.
# Usage: KUBE_BIN=DIR start-k8s.sh STATE_DIR
set -euo pipefail
S=${1:?usage: KUBE_BIN=DIR start-k8s.sh STATE_DIR}; BIN=${KUBE_BIN:?set KUBE_BIN to the folder holding the kube binaries}
for tool in etcd:etcd-server etcdctl:etcd-client kubectl:kubernetes-client openssl:openssl curl:curl; do
  command -v "${tool%%:*}" >/dev/null || { echo "start-k8s.sh: ${tool%%:*} not found: install the Debian package ${tool#*:}" >&2; exit 3; }
done
for b in kube-apiserver kube-controller-manager; do
  [ -x "$BIN/$b" ] || { echo "start-k8s.sh: $BIN/$b missing: build it with build-k8s-1.20-from-debian.sh" >&2; exit 3; }
done
# wait_for SECONDS PIDFILE LOG COMMAND...: until COMMAND succeeds; fail when the process died or time ran out
wait_for() {
  local limit=$1 pidfile=$2 log=$3; shift 3
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    kill -0 "$(cat "$pidfile")" 2>/dev/null || { echo "start-k8s.sh: $(basename "$pidfile" .pid) exited:" >&2; tail -20 "$log" >&2; exit 1; }
    [ $SECONDS -lt $deadline ] || { echo "start-k8s.sh: $(basename "$pidfile" .pid) not ready within ${limit}s:" >&2; tail -20 "$log" >&2; exit 1; }
    sleep 0.2
  done
}
mkdir -p "$S/certs" "$S/etcd"
[ -f "$S/sa.key" ] || { openssl genrsa -out "$S/sa.key" 2048 2>/dev/null; openssl rsa -in "$S/sa.key" -pubout -out "$S/sa.pub" 2>/dev/null; }
echo 'wf-test-token,wf-admin,1000,"system:masters"' > "$S/tokens.csv"
etcd --name wf --data-dir "$S/etcd" --listen-client-urls http://127.0.0.1:23790 --advertise-client-urls http://127.0.0.1:23790 \
  --listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 \
  --initial-cluster wf=http://127.0.0.1:23800 --listen-metrics-urls http://127.0.0.1:23810 > "$S/etcd.log" 2>&1 &
echo $! > "$S/etcd.pid"
wait_for 30 "$S/etcd.pid" "$S/etcd.log" env ETCDCTL_API=3 etcdctl --endpoints http://127.0.0.1:23790 endpoint health
# --service-cluster-ip-range below is a setting the API server requires, not an address anything
# here talks to: there is no kube-proxy and pods use host networking (their IP is 127.0.0.1), and
# --endpoint-reconciler-type=none keeps the API server from publishing itself there.
"$BIN/kube-apiserver" --etcd-servers=http://127.0.0.1:23790 \
  --secure-port=16443 --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --cert-dir="$S/certs" \
  --token-auth-file="$S/tokens.csv" --authorization-mode=RBAC \
  --service-account-key-file="$S/sa.pub" --service-account-signing-key-file="$S/sa.key" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-cluster-ip-range=10.96.0.0/16 --endpoint-reconciler-type=none \
  --kubelet-preferred-address-types=InternalIP > "$S/apiserver.log" 2>&1 &
echo $! > "$S/apiserver.pid"
api_ready() { curl -sk -H "Authorization: Bearer wf-test-token" https://127.0.0.1:16443/readyz | grep -q '^ok'; }
wait_for 120 "$S/apiserver.pid" "$S/apiserver.log" api_ready
cat > "$S/kubeconfig" <<KC
apiVersion: v1
kind: Config
current-context: wf
clusters:
- name: wf
  cluster: {server: "https://127.0.0.1:16443", certificate-authority: "$S/certs/apiserver.crt"}
users:
- name: wf-admin
  user: {token: wf-test-token}
contexts:
- name: wf
  context: {cluster: wf, user: wf-admin, namespace: default}
KC
"$BIN/kube-controller-manager" --kubeconfig="$S/kubeconfig" \
  --controllers=job,ttl-after-finished,garbagecollector,namespace,serviceaccount,serviceaccount-token,replicaset,deployment,nodelifecycle,podgc \
  --service-account-private-key-file="$S/sa.key" --root-ca-file="$S/certs/apiserver.crt" \
  --leader-elect=false --port=0 --secure-port=0 > "$S/kcm.log" 2>&1 &
echo $! > "$S/kcm.pid"
wait_for 120 "$S/kcm.pid" "$S/kcm.log" kubectl --kubeconfig "$S/kubeconfig" get sa default -n default
echo "k8s ready: KUBECONFIG=$S/kubeconfig"
