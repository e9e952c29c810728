#!/usr/bin/env bash
# Builds the test cluster's programs from the Go module proxy, once, into a cache outside
# the repository, and prints where they are. Reused when already built.
#   tests/cluster/build.sh          build what is missing; print the bin directory
#   tests/cluster/build.sh --key    print the cache key (the pinned versions) only
#
# What is built (versions pinned by the go.mod next to each):
#   k8s/         kube-apiserver kubelet kube-controller-manager kube-scheduler kubectl,
#                and two small tools of ours: pause (the pause image's process) and
#                cri-reset (removes every pod sandbox at `cluster.sh down`); one `go build`
#                so the shared packages compile once
#   etcd/        etcd
#   containerd/  containerd containerd-shim-runc-v2 ctr
# runc and the CNI plugins come from Debian (runc, containernetworking-plugins).
#
# Environment: WAYLAY_CLUSTER_CACHE (default ~/.cache/waylay-cluster), GOMODCACHE as Go's,
# WAYLAY_CLUSTER_NICE=19 to build at low priority (on a shared machine).
# Every step's wall time and peak memory (/usr/bin/time -v) is printed and written to
# <cache>/<key>/build-report.txt, with the disk used by the binaries, the module cache
# and the build cache.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
CACHE="${WAYLAY_CLUSTER_CACHE:-$HOME/.cache/waylay-cluster}"

mod_version() {  # mod_version DIR MODULE: the version DIR/go.mod requires
    awk -v m="$2" '$1 == m && $2 ~ /^v/ {print $2; exit} $1 == "require" && $2 == m {print $3; exit}' \
        "$HERE/$1/go.mod"
}
K8S=$(mod_version k8s k8s.io/kubernetes)
ETCD=$(mod_version etcd go.etcd.io/etcd/server/v3)
CONTAINERD=$(mod_version containerd github.com/containerd/containerd/v2)
KEY="k8s-$K8S-etcd-$ETCD-containerd-$CONTAINERD"
if [ "${1:-}" = "--key" ]; then echo "$KEY"; exit 0; fi

BIN="$CACHE/$KEY/bin"
REPORT="$CACHE/$KEY/build-report.txt"
mkdir -p "$BIN"
export GOCACHE="$CACHE/go-build"
export GOFLAGS="-mod=readonly -buildvcs=false"
NICE=()
[ -n "${WAYLAY_CLUSTER_NICE:-}" ] && NICE=(nice -n "$WAYLAY_CLUSTER_NICE")


# step NAME DIR GO-BUILD-ARGS...: one `go build` in DIR, timed; its log in the cache.
step() {
    local name="$1" dir="$2"; shift 2
    local log="$CACHE/$KEY/build-$name.log"
    command -v go >/dev/null || { echo "build.sh: go not found (Go >= 1.25 is needed)" >&2; exit 1; }
    [ -x /usr/bin/time ] || { echo "build.sh: /usr/bin/time not found (apt-get install time)" >&2; exit 1; }
    echo "build.sh: building $name ($(date +%T)); log: $log" >&2
    if ! (cd "$HERE/$dir" && "${NICE[@]}" /usr/bin/time -v go build -trimpath "$@") >"$log" 2>&1; then
        echo "build.sh: building $name failed; the log's tail:" >&2
        tail -n 30 "$log" >&2
        exit 1
    fi
    local rss wall cpu
    rss=$(awk -F': ' '/Maximum resident set size/ {printf "%.0f", $2/1024}' "$log")
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$log")
    cpu=$(awk -F': ' '/(User|System) time/ {t += $2} END {printf "%.0f", t}' "$log")
    echo "$name: wall $wall, CPU ${cpu}s (user+sys), peak memory ${rss} MiB" \
        "($(date -u +%FT%TZ), $(nproc) cores)" | tee -a "$REPORT" >&2
}

have() { local f; for f in "$@"; do [ -x "$BIN/$f" ] || return 1; done; }

k8s_ldflags() {  # what hack/lib/version.sh stamps, so /version and the node report the release
    local minor flags="-s -w" p
    minor="${K8S#v1.}"
    minor="${minor%%.*}"
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        flags+=" -X $p.gitVersion=$K8S -X $p.gitMajor=1 -X $p.gitMinor=$minor"
        flags+=" -X $p.gitTreeState=clean -X $p.gitCommit=$K8S-go-module-proxy"
        flags+=" -X $p.buildDate=1970-01-01T00:00:00Z"
    done
    echo "$flags"
}

K8S_CMDS=(kube-apiserver kubelet kube-controller-manager kube-scheduler kubectl)
if ! have "${K8S_CMDS[@]}" pause cri-reset; then
    CGO_ENABLED=0 step kubernetes-$K8S k8s -ldflags="$(k8s_ldflags)" -o "$BIN/" \
        "${K8S_CMDS[@]/#/k8s.io/kubernetes/cmd/}" ./cmd/pause ./cmd/cri-reset
fi
if ! have etcd; then
    CGO_ENABLED=0 step etcd-$ETCD etcd -ldflags="-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3
fi
if ! have containerd containerd-shim-runc-v2 ctr; then
    pkg=github.com/containerd/containerd/v2
    CGO_ENABLED=0 step containerd-$CONTAINERD containerd \
        -tags "urfave_cli_no_docs no_btrfs no_devmapper no_zfs osusergo netgo" \
        -ldflags="-s -w -X $pkg/version.Version=$CONTAINERD -X $pkg/version.Revision=go-module-proxy" \
        -o "$BIN/" $pkg/cmd/containerd $pkg/cmd/containerd-shim-runc-v2 $pkg/cmd/ctr
fi

if [ -f "$REPORT" ] && ! grep -q '^disk:' "$REPORT"; then
    modcache="$(go env GOMODCACHE)"
    echo "disk: binaries $(du -sh "$BIN" | cut -f1), module cache $(du -sh "$modcache" | cut -f1)" \
        "($modcache, shared with other Go work), build cache $(du -sh "$GOCACHE" | cut -f1)" \
        "($GOCACHE; deletable once built)" | tee -a "$REPORT" >&2
fi
echo "$BIN"
