#!/usr/bin/env bash
# A single-node Kubernetes cluster for waylay's tests, started and stopped by this script
# alone (no systemd, no kubeadm, no registry, no Docker). Needs root.
#   cluster.sh up       build the programs (or reuse them: build.sh), start etcd,
#                       kube-apiserver, kube-controller-manager, kube-scheduler, containerd
#                       and the kubelet, load the local images, wait for the node to be Ready
#   cluster.sh down     stop everything and undo what `up` did to the machine: pods'
#                       sandboxes (through CRI, so CNI tears their network down), mounts,
#                       links, iptables chains, cgroups, sysctls; the state directory
#   cluster.sh status   what runs, and the node
#   cluster.sh env      the line to use the cluster: export KUBECONFIG=...
#   cluster.sh agent-image   build the agent image from this checkout (waylay agent-image
#                       build) and import it, as waylay-agent:0.1 (agent.image's default)
#   cluster.sh load OCI-ARCHIVE...   import images into the cluster's containerd
#
# Everything lives outside the repository: programs in ~/.cache/waylay-cluster/<versions>,
# state in ~/.cache/waylay-cluster/run (removed by down), runtime sockets in
# /run/waylay-cluster; the kubeconfig is ~/.cache/waylay-cluster/run/admin.kubeconfig.
# Only loopback and addresses of links this script creates are listened on: the API
# server on 127.0.0.1:6443, the kubelet on the node address of a link of its own.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
CACHE="${WAYLAY_CLUSTER_CACHE:-$HOME/.cache/waylay-cluster}"
RUN="$CACHE/run"
SOCKDIR=/run/waylay-cluster          # short paths: unix sockets are limited to 108 bytes
CRI_SOCK="$SOCKDIR/containerd.sock"
NODE=waylay-node
# A link of its own carries the node's address: a bridge without ports, since this
# kernel has no dummy links (`ip link add ... type dummy`: "Unknown device type").
NODE_LINK=wyc-node0
NODE_IP=172.30.1.1
BRIDGE=wyc-cni0                      # the CNI bridge; pods get addresses in POD_CIDR
POD_CIDR=172.30.0.0/24
SERVICE_CIDR=172.30.2.0/24
PYTHON="${WAYLAY_PYTHON:-python3}"   # ./dev passes the venv's (its pip fetches wheels)
CNI_BIN=/usr/lib/cni                 # Debian's containernetworking-plugins
# kubelet sets these at start (kubelet's setupKernelTunables); down puts them back.
SYSCTLS=(vm.overcommit_memory kernel.panic kernel.panic_on_oops net.ipv4.ip_forward)
DAEMONS=(etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet)
# Paths the programs use whatever they are told: containerd's shim sockets
# (/run/containerd/s), the kubelet's device-plugin socket and its /var/log/containers
# links, CNI's result cache. Down removes each one that did not exist before up.
FIXED_PATHS=(/run/containerd /var/lib/kubelet /var/log/containers /var/lib/cni)

# The daemons talk to each other on these addresses only: never through a proxy the
# environment may name (the API server reaches the kubelet at NODE_IP).
export NO_PROXY="${NO_PROXY:+$NO_PROXY,}127.0.0.1,localhost,172.30.0.0/16"
export no_proxy="$NO_PROXY"

say() { printf '%s cluster: %s\n' "$(date +%T)" "$*" >&2; }
die() {
    say "error: $*"
    if [ -n "${STARTED:-}" ]; then
        say "what was started is still there: \`./dev cluster down\` removes it"
    fi
    exit 1
}
T0=$SECONDS
elapsed() { echo "$((SECONDS - T0))s"; }

pidof_daemon() {  # the pid of a daemon we started, if it still runs
    local f="$RUN/pids/$1" pid
    [ -f "$f" ] || return 1
    pid=$(cat "$f")
    [ -d "/proc/$pid" ] && [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$(cat "$f.exe")" ] || return 1
    echo "$pid"
}

log_tail() {
    say "the last lines of $RUN/logs/$1.log:"
    tail -n "${2:-25}" "$RUN/logs/$1.log" >&2 || true
}

start() {  # start NAME ARGS...: one daemon, detached, its log in $RUN/logs
    local name="$1"; shift
    local exe="$BIN/$name"
    [ -x "$exe" ] || exe="$(command -v "$name")"
    setsid "$exe" "$@" </dev/null >"$RUN/logs/$name.log" 2>&1 &
    local pid=$! i
    echo "$pid" >"$RUN/pids/$name"
    echo "$exe" >"$RUN/pids/$name.exe"
    # Until the forked shell has become the program (pidof_daemon checks the executable).
    for i in $(seq 1 100); do
        [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$exe" ] && return 0
        [ -d "/proc/$pid" ] || return 0
        sleep 0.05
    done
}

wait_for() {  # wait_for NAME SECONDS WHAT CMD...: until CMD succeeds, while NAME runs
    local name="$1" limit="$2" what="$3"; shift 3
    local until=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        if ! pidof_daemon "$name" >/dev/null; then
            log_tail "$name"
            die "$name exited (while waiting for: $what)"
        fi
        if [ $SECONDS -ge $until ]; then
            log_tail "$name"
            die "$what: not within ${limit}s"
        fi
        sleep 0.5
    done
    say "$what ($(elapsed))"
}

kubectl() { "$BIN/kubectl" --kubeconfig "$RUN/admin.kubeconfig" --request-timeout=10s "$@"; }
ctr() { "$BIN/ctr" --address "$CRI_SOCK" "$@"; }

# ---------------------------------------------------------------------------- up

preflight() {
    [ "$(id -u)" -eq 0 ] || die "needs root (it starts the kubelet and containerd)"
    command -v runc >/dev/null || die "runc not found: apt-get install runc"
    [ -x "$CNI_BIN/bridge" ] || die "CNI plugins not found in $CNI_BIN: apt-get install containernetworking-plugins"
    command -v openssl >/dev/null || die "openssl not found: apt-get install openssl"
    command -v iptables-save >/dev/null || die "iptables not found: apt-get install iptables"
    grep -q overlay /proc/filesystems || modprobe overlay 2>/dev/null || die "no overlayfs in this kernel"
    local d
    for d in "${DAEMONS[@]}"; do
        if pidof_daemon "$d" >/dev/null; then
            die "$d already runs (pid $(pidof_daemon "$d")); \`cluster.sh down\` first"
        fi
    done
    if [ -d "$RUN" ]; then
        die "$RUN exists from an earlier run that was not taken down; \`cluster.sh down\` first"
    fi
}

record_machine() {  # what down puts back
    mkdir -p "$RUN/before"
    local t s
    for t in filter nat mangle raw; do
        iptables -t "$t" -S | awk '$1 == "-N" {print $2}' >"$RUN/before/iptables-$t" || true
        ip6tables -t "$t" -S 2>/dev/null | awk '$1 == "-N" {print $2}' >"$RUN/before/ip6tables-$t" || true
    done
    for s in "${SYSCTLS[@]}"; do echo "$s=$(sysctl -n "$s")"; done >"$RUN/before/sysctl"
    local path
    for path in "${FIXED_PATHS[@]}"; do
        if [ -e "$path" ]; then echo "$path"; fi
    done >"$RUN/before/paths"
}

pki() {
    local p="$RUN/pki"
    mkdir -p "$p"
    (
        cd "$p"
        openssl ecparam -name prime256v1 -genkey -noout -out ca.key 2>/dev/null
        openssl req -x509 -new -key ca.key -days 30 -subj "/CN=waylay-cluster-ca" -out ca.crt \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
        # The service-account signing key: RSA, as every API server accepts.
        openssl genrsa -out sa.key 2048 2>/dev/null
        openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    )
    cert apiserver "/CN=kube-apiserver" serverAuth \
        "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:$NODE_IP,IP:${SERVICE_CIDR%.0/24}.1"
    cert admin "/O=system:masters/CN=waylay-admin" clientAuth
    cert controller-manager "/CN=system:kube-controller-manager" clientAuth
    cert scheduler "/CN=system:kube-scheduler" clientAuth
    cert kubelet "/O=system:nodes/CN=system:node:$NODE" clientAuth
    cert kubelet-serving "/CN=$NODE" serverAuth "DNS:$NODE,IP:$NODE_IP"
    cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
}

cert() {  # cert NAME SUBJECT USAGE [SANS]: a key and a certificate signed by the CA
    local p="$RUN/pki" ext
    ext="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=$3"
    [ -n "${4:-}" ] && ext+="
subjectAltName=$4"
    openssl ecparam -name prime256v1 -genkey -noout -out "$p/$1.key" 2>/dev/null
    openssl req -new -key "$p/$1.key" -subj "$2" -out "$p/$1.csr"
    openssl x509 -req -in "$p/$1.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial \
        -days 30 -extfile <(echo "$ext") -out "$p/$1.crt" 2>/dev/null
    rm -f "$p/$1.csr"
}

kubeconfig() {  # kubeconfig NAME CERT: a kubeconfig with the CA and that client cert embedded
    local p="$RUN/pki"
    cat >"$RUN/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: waylay
  cluster:
    server: https://127.0.0.1:6443
    certificate-authority-data: $(base64 -w0 "$p/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(base64 -w0 "$p/$2.crt")
    client-key-data: $(base64 -w0 "$p/$2.key")
contexts:
- name: waylay
  context: {cluster: waylay, user: $2, namespace: default}
current-context: waylay
EOF
    chmod 600 "$RUN/$1.kubeconfig"
}

network() {
    ip link add "$NODE_LINK" type bridge
    ip addr add "$NODE_IP/32" dev "$NODE_LINK"
    ip link set "$NODE_LINK" up
    mkdir -p "$RUN/cni/net.d" "$RUN/cni/ipam"
    # No ipMasq: pods reach the node and each other, never outside; no iptables rules.
    cat >"$RUN/cni/net.d/10-waylay.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "waylay",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$RUN/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
EOF
}

start_etcd() {
    start etcd --name waylay --data-dir "$RUN/etcd" \
        --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
        --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
        --initial-cluster waylay=http://127.0.0.1:2380 --listen-metrics-urls= \
        --quota-backend-bytes=$((1 << 30))
    wait_for etcd 30 "etcd is healthy" curl -sf http://127.0.0.1:2379/health
}

start_control_plane() {
    local p="$RUN/pki"
    start kube-apiserver \
        --etcd-servers=http://127.0.0.1:2379 \
        --bind-address=127.0.0.1 --secure-port=6443 --advertise-address="$NODE_IP" \
        --tls-cert-file="$p/apiserver.crt" --tls-private-key-file="$p/apiserver.key" \
        --client-ca-file="$p/ca.crt" \
        --service-account-issuer=https://kubernetes.default.svc.cluster.local \
        --service-account-key-file="$p/sa.pub" --service-account-signing-key-file="$p/sa.key" \
        --service-cluster-ip-range="$SERVICE_CIDR" \
        --authorization-mode=Node,RBAC \
        --enable-admission-plugins=NodeRestriction \
        --allow-privileged=true \
        --kubelet-client-certificate="$p/apiserver-kubelet-client.crt" \
        --kubelet-client-key="$p/apiserver-kubelet-client.key" \
        --kubelet-certificate-authority="$p/ca.crt" \
        --kubelet-preferred-address-types=InternalIP \
        --profiling=false
    wait_for kube-apiserver 90 "kube-apiserver is ready" kubectl get --raw /readyz
    local common=(--bind-address=127.0.0.1 --leader-elect=false --profiling=false)
    start kube-controller-manager "${common[@]}" \
        --kubeconfig="$RUN/controller-manager.kubeconfig" \
        --authentication-kubeconfig="$RUN/controller-manager.kubeconfig" \
        --authorization-kubeconfig="$RUN/controller-manager.kubeconfig" \
        --service-account-private-key-file="$p/sa.key" --root-ca-file="$p/ca.crt" \
        --cluster-signing-cert-file="$p/ca.crt" --cluster-signing-key-file="$p/ca.key" \
        --use-service-account-credentials=true
    start kube-scheduler "${common[@]}" \
        --kubeconfig="$RUN/scheduler.kubeconfig" \
        --authentication-kubeconfig="$RUN/scheduler.kubeconfig" \
        --authorization-kubeconfig="$RUN/scheduler.kubeconfig"
    wait_for kube-controller-manager 60 "kube-controller-manager is healthy" \
        curl -skf https://127.0.0.1:10257/healthz
    wait_for kube-scheduler 60 "kube-scheduler is healthy" curl -skf https://127.0.0.1:10259/healthz
}

start_containerd() {
    mkdir -p "$SOCKDIR" "$RUN/containerd/certs.d/_default"
    # No registry is ever asked: every registry's host is a closed loopback port, so a
    # missing image fails at once (ErrImagePull) instead of reaching out to docker.io.
    cat >"$RUN/containerd/certs.d/_default/hosts.toml" <<EOF
server = "http://127.0.0.1:1"
[host."http://127.0.0.1:1"]
  capabilities = ["pull", "resolve"]
EOF
    cat >"$RUN/containerd/config.toml" <<EOF
version = 3
root = "$RUN/containerd/root"
state = "$SOCKDIR/state"
# Not /opt/containerd, /var/lib/nri, /etc/cdi: nothing of ours outside the state dirs.
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.grpc.v1.cri.cdi"]

[grpc]
  address = "$CRI_SOCK"

[ttrpc]
  address = "$SOCKDIR/containerd.sock.ttrpc"

[debug]
  address = "$SOCKDIR/debug.sock"

[plugins.'io.containerd.internal.v1.opt']
  path = "$RUN/containerd/opt"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "localhost/waylay/pause:1"
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = "$RUN/containerd/certs.d"

[plugins.'io.containerd.cri.v1.runtime']
  # root here lacks CAP_SYS_RESOURCE: negative oom_score_adj values cannot be written,
  # so clamp them to containerd's own (0) instead of failing every container.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_cdi = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["$CNI_BIN"]
    conf_dir = "$RUN/cni/net.d"
    use_internal_loopback = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
    SystemdCgroup = false
    Root = "$SOCKDIR/runc"

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
EOF
    start containerd --config "$RUN/containerd/config.toml"
    wait_for containerd 30 "containerd is serving" ctr version
}

load_images() {  # import every OCI archive given into the CRI namespace
    local f
    for f in "$@"; do
        ctr -n k8s.io images import "$f" >/dev/null 2>"$RUN/logs/import.err" || {
            cat "$RUN/logs/import.err" >&2
            die "importing $f into containerd failed"
        }
        say "imported $(basename "$f") ($(elapsed))"
    done
}

start_kubelet() {
    local p="$RUN/pki"
    mkdir -p "$RUN/kubelet" "$RUN/pod-logs"
    # Pods inherit the node's resolv.conf, whose nameserver they cannot reach here; give
    # them one of their own (nothing answers on the pod's loopback: lookups fail fast).
    printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' >"$RUN/resolv.conf"
    cat >"$RUN/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $p/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $p/kubelet-serving.crt
tlsPrivateKeyFile: $p/kubelet-serving.key
containerRuntimeEndpoint: unix://$CRI_SOCK
cgroupDriver: cgroupfs
# This machine has cgroup v1 only; kubelet >= 1.35 refuses it unless told.
failCgroupV1: false
# root lacks CAP_SYS_RESOURCE: the kubelet cannot lower its own oom_score_adj.
oomScoreAdj: 0
resolvConf: $RUN/resolv.conf
podLogsDir: $RUN/pod-logs
failSwapOn: false
# No kube-proxy, no cluster DNS: pods are reached through port-forward.
clusterDomain: cluster.local
imageGCHighThresholdPercent: 100
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
serializeImagePulls: false
EOF
    start kubelet --config="$RUN/kubelet/config.yaml" --kubeconfig="$RUN/kubelet.kubeconfig" \
        --root-dir="$RUN/kubelet" --hostname-override="$NODE" --node-ip="$NODE_IP"
    wait_for kubelet 60 "node $NODE registered" kubectl get node "$NODE"
    wait_for kubelet 120 "node $NODE is Ready" node_ready
}

node_ready() {
    [ "$(kubectl get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

up() {
    preflight
    STARTED=1
    say "building or reusing the programs"
    BIN="$("$HERE/build.sh")"
    mkdir -p "$RUN/logs" "$RUN/pids"
    echo "$BIN" >"$RUN/bin"
    record_machine
    pki
    kubeconfig admin admin
    kubeconfig controller-manager controller-manager
    kubeconfig scheduler scheduler
    kubeconfig kubelet kubelet
    network
    say "certificates, kubeconfigs and the node's link ready ($(elapsed))"
    start_etcd
    start_control_plane
    start_containerd
    say "building or reusing the images"
    local images
    images="$("$PYTHON" "$HERE/images.py" --bin "$BIN" --out "$CACHE/images" pause debian)"
    # The agent image, when built before (`cluster.sh agent-image` builds it anew).
    [ -f "$CACHE/images/agent.oci.tar" ] && images+=" $CACHE/images/agent.oci.tar"
    # shellcheck disable=SC2086
    load_images $images
    start_kubelet
    say "up in $(elapsed); use it with: export KUBECONFIG=$RUN/admin.kubeconfig"
}

# -------------------------------------------------------------------------- down

stop_daemon() {  # SIGTERM, then SIGKILL after a grace period
    local name="$1" pid i
    pid=$(pidof_daemon "$name") || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 40); do
        [ -d "/proc/$pid" ] || { say "stopped $name"; return 0; }
        sleep 0.25
    done
    kill -KILL "$pid" 2>/dev/null || true
    say "killed $name (it did not stop within 10s)"
}

down() {
    [ "$(id -u)" -eq 0 ] || die "needs root"
    [ -d "$RUN" ] || { say "not running (no $RUN)"; return 0; }
    BIN="$(cat "$RUN/bin" 2>/dev/null || "$HERE/build.sh" --key)"
    stop_daemon kubelet
    if pidof_daemon containerd >/dev/null; then
        # Through CRI, so containerd runs each pod's CNI DEL and unmounts its containers.
        "$BIN/cri-reset" "unix://$CRI_SOCK" >&2 || say "cri-reset failed; cleaning up by hand"
    fi
    stop_daemon containerd
    # Shims outlive containerd by design; ours are the ones running our binary.
    local pid
    for pid in $(ls /proc | grep -E '^[0-9]+$'); do
        if [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$BIN/containerd-shim-runc-v2" ]; then
            kill -KILL "$pid" 2>/dev/null && say "killed leftover shim $pid" || true
        fi
    done
    local d
    for d in kube-scheduler kube-controller-manager kube-apiserver etcd; do stop_daemon "$d"; done
    unmount_under "$RUN" "$SOCKDIR"
    ip link del "$BRIDGE" 2>/dev/null && say "removed link $BRIDGE" || true
    ip link del "$NODE_LINK" 2>/dev/null && say "removed link $NODE_LINK" || true
    remove_new_chains
    remove_cgroups
    if [ -f "$RUN/before/sysctl" ]; then
        local line
        while read -r line; do sysctl -qw "$line" || say "could not restore $line"; done \
            <"$RUN/before/sysctl"
    fi
    local path
    for path in "${FIXED_PATHS[@]}"; do
        [ -e "$path" ] || continue
        if [ -f "$RUN/before/paths" ] && ! grep -qxF "$path" "$RUN/before/paths"; then
            rm -rf "$path" && say "removed $path"
        fi
    done
    # Where /var/log/containers was there before: only the links into our pods' logs.
    [ -d /var/log/containers ] && find /var/log/containers -lname "$RUN/*" -delete
    rm -rf "$CACHE/last-logs"
    mv "$RUN/logs" "$CACHE/last-logs" 2>/dev/null || true
    rm -rf "$RUN" "$SOCKDIR"
    say "down; the last run's logs are in $CACHE/last-logs"
}

unmount_under() {  # every mount below these directories, deepest first
    local dir m
    for dir in "$@"; do
        awk -v d="$dir/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r |
            while read -r m; do
                umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || say "could not unmount $m"
            done
    done
}

remove_new_chains() {  # the chains that did not exist before up (the kubelet's KUBE-*)
    local cmd t chain n=0
    for cmd in iptables ip6tables; do
        command -v "$cmd" >/dev/null || continue
        for t in filter nat mangle raw; do
            [ -f "$RUN/before/$cmd-$t" ] || continue
            for chain in $("$cmd" -t "$t" -S 2>/dev/null | awk '$1 == "-N" {print $2}'); do
                grep -qxF "$chain" "$RUN/before/$cmd-$t" && continue
                # First the rules that jump to it, then its own rules, then the chain.
                "$cmd" -t "$t" -S | awk -v c="$chain" '$1 == "-A" && / -j / {for (i = 1; i < NF; i++) if ($i == "-j" && $(i + 1) == c) print}' |
                    while read -r rule; do
                        # shellcheck disable=SC2086
                        "$cmd" -t "$t" ${rule/-A/-D}
                    done
                "$cmd" -t "$t" -F "$chain" && "$cmd" -t "$t" -X "$chain" && n=$((n + 1))
            done
        done
    done
    [ "$n" -eq 0 ] || say "removed $n iptables chains the cluster created"
}

remove_cgroups() {  # the kubelet's kubepods hierarchy, in every cgroup v1 controller
    local root dir n=0 pids
    # Containers whose runtime died before it could stop them are still in their pods'
    # cgroups (only our kubelet puts processes there): they go first.
    pids=$(find /sys/fs/cgroup/*/kubepods -name cgroup.procs -exec cat {} + 2>/dev/null |
        sort -u || true)
    if [ -n "$pids" ]; then
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
        say "killed $(echo "$pids" | wc -w) processes left in the pods' cgroups"
        sleep 1
    fi
    for root in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/*/kubepods.slice /sys/fs/cgroup/kubepods; do
        [ -d "$root" ] || continue
        while read -r dir; do rmdir "$dir" 2>/dev/null && n=$((n + 1)); done \
            < <(find "$root" -depth -type d)
        [ -d "$root" ] && say "could not remove $root (processes left in it?)"
    done
    [ "$n" -eq 0 ] || say "removed $n cgroups"
}

# ------------------------------------------------------------------------ status

status() {
    if [ ! -d "$RUN" ]; then echo "cluster: down"; return 3; fi
    BIN="$(cat "$RUN/bin")"
    local d pid bad=0
    for d in "${DAEMONS[@]}"; do
        if pid=$(pidof_daemon "$d"); then
            printf '%-24s running (pid %s)\n' "$d" "$pid"
        else
            printf '%-24s NOT running (log: %s)\n' "$d" "$RUN/logs/$d.log"; bad=1
        fi
    done
    kubectl get nodes -o wide 2>&1 || bad=1
    echo "export KUBECONFIG=$RUN/admin.kubeconfig"
    return "$bad"
}

COMMAND="${1:-}"
case "$COMMAND" in
    up) up ;;
    down) down ;;
    status) status ;;
    env) echo "export KUBECONFIG=$RUN/admin.kubeconfig" ;;
    agent-image)
        [ -d "$RUN" ] || die "the cluster is not up"
        BIN="$(cat "$RUN/bin")"
        load_images "$("$PYTHON" "$HERE/images.py" --bin "$BIN" --out "$CACHE/images" --rebuild-agent agent)" ;;
    load) shift; [ -d "$RUN" ] || die "the cluster is not up"; BIN="$(cat "$RUN/bin")"; load_images "$@" ;;
    *) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
