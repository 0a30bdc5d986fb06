#!/bin/bash
# Builds kube-apiserver, kube-controller-manager, kube-scheduler and kubelet v1.20.2, and the
# static `pause` of the kubelet's sandbox image, from Debian bookworm's `kubernetes` source
# package (it ships vendor/), with kube-1.20-offline.patch beside this script: the kubelet
# accepts a loopback node IP, has no cloud credential providers, and sets no negative
# oom_score_adj (which some VMs and containers forbid). Offline after `apt-get source`.
# About 10 minutes on 2 cores. Needs the Debian packages dpkg-dev golang-go rsync jq gcc
# libc6-dev golang-github-modern-go-reflect2-dev (installed here when missing, as root) and the
# machine's Debian archive for the source package.
# Usage: build-k8s-1.20-from-debian.sh WORKDIR OUTDIR   (WORKDIR may be removed afterwards)
set -euo pipefail
W=${1:?usage: build-k8s-1.20-from-debian.sh WORKDIR OUTDIR}; OUT=${2:?usage: build-k8s-1.20-from-debian.sh WORKDIR OUTDIR}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$W/apt/lists/partial" "$OUT"; W=$(cd "$W" && pwd); OUT=$(cd "$OUT" && pwd)
NEEDS=(dpkg-dev golang-go rsync jq gcc libc6-dev golang-github-modern-go-reflect2-dev)
missing=()
for pkg in "${NEEDS[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || { echo "build-k8s: install the Debian packages ${missing[*]} first (apt-get install)" >&2; exit 3; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >/dev/null
fi
# deb-src entries for the archives this machine already uses (its own apt sources, deb -> deb-src)
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
  sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources > "$W/apt/sources.sources"
else
  sed -n 's/^deb /deb-src /p' /etc/apt/sources.list > "$W/apt/sources.list"
fi
APTO=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$W/apt" -o "Dir::State::Lists=$W/apt/lists")
apt-get "${APTO[@]}" update >/dev/null
(cd "$W" && apt-get "${APTO[@]}" source kubernetes >/dev/null 2>&1)
cd "$W"/kubernetes-1.20.5+really1.20.2
# Go 1.19 + vendored reflect2 v1.0.1 => kube-apiserver SIGSEGV ("unexpected fault address") on CRD requests; use Debian's 1.0.2
rm -rf vendor/github.com/modern-go/reflect2 && cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 vendor/github.com/modern-go/reflect2
rm -f vendor/github.com/modern-go/reflect2/*_test.go
patch -p1 < "$HERE/kube-1.20-offline.patch"
export GOPATH=$PWD/.go CGO_ENABLED=0 GOPROXY=off GOCACHE=$W/gocache HOME=$W/home
export KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_TREE_STATE=clean KUBE_GIT_COMMIT=faecb196815e248d3ecfb03c680a4507229c2a56 KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR=20
mkdir -p .go/src/k8s.io "$HOME"; [ -L .go/src/k8s.io/kubernetes ] || ln -s ../../.. .go/src/k8s.io/kubernetes
GOFLAGS=-tags=providerless make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kubelet"
cp _output/bin/{kube-apiserver,kube-controller-manager,kube-scheduler,kubelet} "$OUT/"
# the sandbox ("pause") container's program, static: imported as localhost/pause:3.2
gcc -Os -static -o "$OUT/pause" build/pause/linux/pause.c -DVERSION=3.2 && strip "$OUT/pause"
echo "built into $OUT: kube-apiserver kube-controller-manager kube-scheduler kubelet pause"
