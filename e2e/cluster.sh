#!/usr/bin/env bash
# One real Kubernetes cluster on this machine, in a network namespace of its own.
#
#   e2e/cluster.sh up NAME [INDEX]     start cluster NAME (INDEX 1..8 picks its addresses; default 1)
#   e2e/cluster.sh down NAME           stop it and remove everything it made
#   e2e/cluster.sh link NAME1 NAME2    a veth pair between two running clusters, with routes
#   e2e/cluster.sh floe NAME           start floe on it (node plugin, controller, sidecars, objects)
#   e2e/cluster.sh restart NAME PROC   SIGKILL one of its processes (e.g. floe-serve) and start it again
#   e2e/cluster.sh kubectl NAME ARGS   kubectl against it (from inside its network namespace)
#   e2e/cluster.sh run NAME CMD ARGS   any command inside its network namespace
#
# What `up` starts, every process a host process entered into the cluster's
# network namespace with `nsenter --net` (not `ip netns exec`, which remounts
# /sys): etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# containerd, kubelet. No kube-proxy, no DNS, no registry: the pause and
# records images are imported from OCI archives built by e2e/build.sh.
#
# Names: network namespace floe-e2e-NAME, cgroup /floe-e2e-NAME in every v1
# hierarchy, state in /var/lib/floe-e2e/NAME, logs in /var/log/floe-e2e/NAME
# (kept after down). Addresses, all from 198.18.0.0/15, for INDEX i:
#   node (on lo of the namespace)  198.18.(16i).1
#   pods (bridge floe-e2e-br)      198.18.(16i+1).0/24
#   services (no proxy)            198.18.(16i+2).0/24
#   link between clusters          198.19.255.i/24 (veth floe-e2e-l-i)
#
# `up` tears everything down itself when it fails or is interrupted; `down` is
# idempotent and also cleans a half-made cluster.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
# shellcheck source=e2e/versions.env
source "$here/versions.env"

state_root=${FLOE_E2E_STATE:-/var/lib/floe-e2e}
log_root=${FLOE_E2E_LOGS:-/var/log/floe-e2e}
hierarchies=(cpu cpuacct cpuset memory devices freezer blkio pids systemd net_cls net_prio perf_event hugetlb rdma misc)

die() {
    echo "cluster: $*" >&2
    exit 1
}

# Paths and names of cluster $1 (sets globals).
names() {
    name=$1
    [[ $name =~ ^[a-z0-9]([a-z0-9-]{0,14}[a-z0-9])?$ ]] || die "cluster name '$name': lowercase letters, digits, '-', at most 16"
    ns=floe-e2e-$name
    node=floe-e2e-$name
    cgroup=/floe-e2e-$name
    dir=$state_root/$name
    logs=$log_root/$name
    pki=$dir/pki
}

addresses() {
    local i=$1
    [[ $i =~ ^[1-8]$ ]] || die "index '$i': 1..8"
    node_ip=198.18.$((16 * i)).1
    pod_net=198.18.$((16 * i + 1))
    pod_cidr=$pod_net.0/24
    service_cidr=198.18.$((16 * i + 2)).0/24
    service_ip=198.18.$((16 * i + 2)).1
    cluster_net=198.18.$((16 * i)).0/20
}

in_ns() {
    nsenter --net="/run/netns/$ns" -- "$@"
}

bins() {
    k8s_bin=$("$here/build.sh" kubernetes)
    etcd_bin=$("$here/build.sh" etcd)
    containerd_bin=$("$here/build.sh" containerd)
    images_bin=$("$here/build.sh" images)
}

# Starts a process in the namespace, detached, logging to $logs/$1.log; its
# pid goes to $dir/pids (one "name pid" a line).
start() {
    local what=$1
    shift
    # setsid: its own session, so a Ctrl-C of the caller reaches only us,
    # and down stops it in order.
    setsid nsenter --net="/run/netns/$ns" -- "$@" >>"$logs/$what.log" 2>&1 </dev/null &
    echo "$what $!" >>"$dir/pids"
    mkdir -p "$dir/cmd"
    printf '%s\0' "$@" >"$dir/cmd/$what"
}

# Kills process $2 of cluster $1 with SIGKILL and starts it again with the
# same command line (what a crash and a restart by its supervisor do).
restart() {
    names "$1"
    local what=$2 pid args
    pid=$(pid_of "$what")
    [[ -n $pid && -f $dir/cmd/$what ]] || die "no process $what in cluster $name"
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    mapfile -d '' args <"$dir/cmd/$what"
    start "$what" "${args[@]}"
    echo "restarted $what in $name (pid $(pid_of "$what"))" >&2
}

pid_of() {
    awk -v w="$1" '$1 == w { p = $2 } END { print p }' "$dir/pids" 2>/dev/null
}

alive() {
    local pid
    pid=$(pid_of "$1")
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null
}

# $1 what, $2 seconds, then a command that succeeds when ready.
wait_for() {
    local what=$1 secs=$2
    shift 2
    local end=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if [[ -n $(pid_of "$what") ]] && ! alive "$what"; then
            tail -n 30 "$logs/$what.log" >&2 || true
            die "$what exited (log: $logs/$what.log)"
        fi
        ((SECONDS < end)) || {
            tail -n 30 "$logs/$what.log" >&2 || true
            die "$what not ready after $secs s (log: $logs/$what.log)"
        }
        sleep 0.5
    done
}

# ---- certificates -----------------------------------------------------------

# $1 file stem, $2 subject, $3 extensions (besides basicConstraints).
cert() {
    local stem=$1 subj=$2 ext=$3
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$pki/$stem.key" \
        -out "$pki/$stem.csr" -subj "$subj" 2>/dev/null
    openssl x509 -req -in "$pki/$stem.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
        -days 7 -out "$pki/$stem.crt" -extfile <(printf '%s\nbasicConstraints=CA:FALSE\n' "$ext") 2>/dev/null
    rm -f "$pki/$stem.csr"
}

make_pki() {
    mkdir -p "$pki"
    chmod 700 "$pki"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$pki/ca.key" \
        -out "$pki/ca.crt" -days 7 -subj "/CN=floe-e2e $name CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    cert apiserver "/CN=kube-apiserver" "subjectAltName=IP:$node_ip,IP:127.0.0.1,IP:$service_ip,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost
extendedKeyUsage=serverAuth"
    # The API server's identity towards kubelets (exec, logs): system:masters
    # covers nodes/proxy, what system:kubelet-api-admin would grant.
    cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "extendedKeyUsage=clientAuth"
    cert admin "/O=system:masters/CN=floe-e2e-admin" "extendedKeyUsage=clientAuth"
    cert controller-manager "/CN=system:kube-controller-manager" "extendedKeyUsage=clientAuth"
    cert scheduler "/CN=system:kube-scheduler" "extendedKeyUsage=clientAuth"
    cert kubelet "/O=system:nodes/CN=system:node:$node" "extendedKeyUsage=clientAuth"
    cert kubelet-serving "/CN=$node" "subjectAltName=IP:$node_ip,DNS:$node
extendedKeyUsage=serverAuth"
    openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
    openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
    # floe's controller ↔ node mutual TLS (split mode, node.proto).
    cert floe-node "/CN=floe node $node" "subjectAltName=IP:$node_ip
extendedKeyUsage=serverAuth"
    # The node serves only the name its --peer-name gives (default controller).
    cert floe-controller "/CN=floe controller" "subjectAltName=DNS:controller
extendedKeyUsage=clientAuth"
}

# $1 identity (pki stem) → $dir/$1.kubeconfig
kubeconfig() {
    cat >"$dir/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: $name
  cluster:
    server: https://$node_ip:6443
    certificate-authority: $pki/ca.crt
users:
- name: $1
  user:
    client-certificate: $pki/$1.crt
    client-key: $pki/$1.key
contexts:
- name: $name
  context: {cluster: $name, user: $1}
current-context: $name
EOF
}

# ---- up -----------------------------------------------------------------------

make_netns() {
    ip netns add "$ns"
    in_ns ip link set lo up
    in_ns ip addr add "$node_ip/32" dev lo
    in_ns sysctl -qw net.ipv4.ip_forward=1
}

make_cgroups() {
    local h d
    for h in "${hierarchies[@]}"; do
        d=/sys/fs/cgroup/$h
        [[ -d $d ]] || continue
        mkdir -p "$d$cgroup"
        if [[ $h == cpuset ]]; then
            cat "$d/cpuset.cpus" >"$d$cgroup/cpuset.cpus"
            cat "$d/cpuset.mems" >"$d$cgroup/cpuset.mems"
        fi
    done
    [[ -d /sys/fs/cgroup/unified ]] && mkdir -p "/sys/fs/cgroup/unified$cgroup"
    return 0
}

write_configs() {
    mkdir -p "$dir/containerd" "$dir/cni/net.d" "$dir/cni/ipam" "$dir/kubelet" "$dir/pod-logs" "$dir/etcd"
    chmod 700 "$dir/etcd"
    cat >"$dir/containerd/config.toml" <<EOF
version = 3
root = "$dir/containerd/root"
state = "$dir/containerd/state"
temp = "$dir/containerd/tmp"
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.blockfile", "io.containerd.snapshotter.v1.erofs", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$dir/containerd/containerd.sock"

[ttrpc]
  address = "$dir/containerd/containerd.sock.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins]
  [plugins.'io.containerd.internal.v1.opt']
    path = "$dir/containerd/opt"
  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = "overlayfs"
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = "floe-e2e.invalid/pause:$PAUSE_VERSION"
  [plugins.'io.containerd.cri.v1.runtime']
    netns_mounts_under_state_dir = true
    # This machine's root lacks CAP_SYS_RESOURCE: no OOM score below ours.
    restrict_oom_score_adj = true
    enable_cdi = false
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = "$(command -v runc)"
          Root = "$dir/runc"
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ["/usr/lib/cni"]
      conf_dir = "$dir/cni/net.d"
      max_conf_num = 1
EOF
    cat >"$dir/cni/net.d/10-floe-e2e.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "floe-e2e",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "floe-e2e-br",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$dir/cni/ipam",
        "ranges": [[{"subnet": "$pod_cidr", "gateway": "$pod_net.1"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "loopback"}
  ]
}
EOF
    : >"$dir/kubelet/resolv.conf"
    cat >"$dir/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: $cgroup
containerRuntimeEndpoint: unix://$dir/containerd/containerd.sock
podLogsDir: $dir/pod-logs
volumePluginDir: $dir/kubelet/volume-plugins
address: $node_ip
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $pki/kubelet-serving.crt
tlsPrivateKeyFile: $pki/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization:
  mode: Webhook
clusterDomain: cluster.local
resolvConf: $dir/kubelet/resolv.conf
failSwapOn: false
oomScoreAdj: 0
maxPods: 30
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
evictionPressureTransitionPeriod: 10s
nodeStatusUpdateFrequency: 5s
syncFrequency: 10s
fileCheckFrequency: 10s
shutdownGracePeriod: 0s
localStorageCapacityIsolation: false
EOF
}

start_control_plane() {
    start etcd "$etcd_bin/etcd" --name default --data-dir "$dir/etcd" \
        --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
        --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
        --initial-cluster default=http://127.0.0.1:2380 --unsafe-no-fsync --log-level warn
    wait_for etcd 60 in_ns curl -sf http://127.0.0.1:2379/health

    start kube-apiserver "$k8s_bin/kube-apiserver" --etcd-servers http://127.0.0.1:2379 \
        --bind-address "$node_ip" --advertise-address "$node_ip" --secure-port 6443 \
        --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
        --client-ca-file "$pki/ca.crt" \
        --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" \
        --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
        --kubelet-certificate-authority "$pki/ca.crt" --kubelet-preferred-address-types InternalIP \
        --service-account-issuer "https://kubernetes.default.svc.cluster.local" \
        --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
        --service-cluster-ip-range "$service_cidr" --authorization-mode Node,RBAC \
        --allow-privileged=true --profiling=false --endpoint-reconciler-type none
    wait_for kube-apiserver 120 kc get --raw /readyz

    start kube-controller-manager "$k8s_bin/kube-controller-manager" \
        --kubeconfig "$dir/controller-manager.kubeconfig" \
        --authentication-kubeconfig "$dir/controller-manager.kubeconfig" \
        --authorization-kubeconfig "$dir/controller-manager.kubeconfig" \
        --bind-address 127.0.0.1 --leader-elect=false --use-service-account-credentials=true \
        --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
        --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
        --profiling=false
    start kube-scheduler "$k8s_bin/kube-scheduler" --kubeconfig "$dir/scheduler.kubeconfig" \
        --authentication-kubeconfig "$dir/scheduler.kubeconfig" \
        --authorization-kubeconfig "$dir/scheduler.kubeconfig" \
        --bind-address 127.0.0.1 --leader-elect=false --profiling=false
}

start_node() {
    start containerd "$containerd_bin/containerd" --config "$dir/containerd/config.toml"
    wait_for containerd 60 ctr version
    ctr images import "$images_bin/pause.tar" >>"$logs/ctr.log" 2>&1
    ctr images import "$images_bin/records.tar" >>"$logs/ctr.log" 2>&1

    start kubelet "$k8s_bin/kubelet" --config "$dir/kubelet/config.yaml" \
        --kubeconfig "$dir/kubelet.kubeconfig" --root-dir "$dir/kubelet/root" \
        --cert-dir "$dir/kubelet/pki" --hostname-override "$node" --node-ip "$node_ip" -v 2
    wait_for kubelet 180 node_ready
}

node_ready() {
    [[ $(kc get node "$node" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}') == True ]]
}

kc() {
    in_ns "$k8s_bin/kubectl" --kubeconfig "$dir/admin.kubeconfig" "$@"
}

ctr() {
    in_ns "$containerd_bin/ctr" --address "$dir/containerd/containerd.sock" -n k8s.io "$@"
}

up() {
    names "$1"
    addresses "${2:-1}"
    [[ $(id -u) == 0 ]] || die "needs root"
    if [[ -e $dir || -e /run/netns/$ns ]]; then
        die "cluster $name exists (e2e/cluster.sh down $name first)"
    fi
    "$here/deps.sh"
    bins
    local t0=$SECONDS
    mkdir -p "$dir" "$logs"
    rm -f "$logs"/*.log
    echo "${2:-1}" >"$dir/index"
    # From here on a failure or an interruption removes everything again.
    trap 'rc=$?; trap - EXIT INT TERM; if ((rc != 0)); then echo "cluster: up $name failed, tearing down" >&2; down_named "$name"; fi; exit $rc' EXIT
    trap 'exit 130' INT TERM
    make_netns
    make_cgroups
    make_pki
    for id in admin controller-manager scheduler kubelet; do kubeconfig "$id"; done
    write_configs
    start_control_plane
    start_node
    # Nothing runs in the default namespace's service account without it.
    wait_for kube-controller-manager 60 kc get serviceaccount default -n default
    trap - EXIT INT TERM
    write_tools
    echo "cluster $name up in $((SECONDS - t0)) s: node $node ($node_ip), pods $pod_cidr" >&2
    echo "  kubectl: $dir/kubectl get nodes      (or e2e/cluster.sh kubectl $name ...)" >&2
    echo "  logs:    $logs" >&2
}

# Small wrappers a person can run: $dir/kubectl, $dir/ctr, $dir/env.
write_tools() {
    cat >"$dir/kubectl" <<EOF
#!/bin/sh
exec nsenter --net=/run/netns/$ns -- $k8s_bin/kubectl --kubeconfig $dir/admin.kubeconfig "\$@"
EOF
    cat >"$dir/ctr" <<EOF
#!/bin/sh
exec nsenter --net=/run/netns/$ns -- $containerd_bin/ctr --address $dir/containerd/containerd.sock -n k8s.io "\$@"
EOF
    chmod +x "$dir/kubectl" "$dir/ctr"
    cat >"$dir/env" <<EOF
FLOE_E2E_NAME=$name
FLOE_E2E_NETNS=/run/netns/$ns
FLOE_E2E_NODE=$node
FLOE_E2E_NODE_IP=$node_ip
FLOE_E2E_POD_CIDR=$pod_cidr
FLOE_E2E_KUBECONFIG=$dir/admin.kubeconfig
FLOE_E2E_KUBECTL=$k8s_bin/kubectl
FLOE_E2E_KUBELET_ROOT=$dir/kubelet/root
FLOE_E2E_RECORDS_IMAGE=floe-e2e.invalid/records:$(cat "$images_bin/records.tag")
FLOE_E2E_DIR=$dir
FLOE_E2E_LOGS=$logs
EOF
}

# ---- down ---------------------------------------------------------------------

# Every pid in the cgroups of the cluster (pods) or in its network namespace
# (shims, our processes).
cluster_pids() {
    local h
    for h in pids memory freezer cpu; do
        [[ -d /sys/fs/cgroup/$h$cgroup ]] && find "/sys/fs/cgroup/$h$cgroup" -name cgroup.procs -exec cat {} + 2>/dev/null
    done
    [[ -e /run/netns/$ns ]] && ip netns pids "$ns" 2>/dev/null
    return 0
}

down_named() {
    names "$1"
    local pid what p
    # Our processes: TERM to all (newest first), up to 5 s to exit, then KILL.
    local pids=()
    if [[ -f $dir/pids ]]; then
        while read -r what pid; do
            kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
        done < <(tac "$dir/pids")
    fi
    for _ in $(seq 50); do
        local left=0
        for pid in "${pids[@]}"; do
            kill -0 "$pid" 2>/dev/null && left=1
        done
        ((left)) || break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    # Whatever is left: shims, pods' processes, anything a pod started.
    for _ in 1 2 3 4 5; do
        p=$(cluster_pids | sort -u | tr '\n' ' ')
        [[ -z ${p// /} ]] && break
        # shellcheck disable=SC2086
        kill -KILL $p 2>/dev/null || true
        sleep 0.3
    done
    sweep_mounts
    remove_cgroups
    # kubelet's links to container logs (its /var/log/containers is fixed).
    find /var/log/containers -maxdepth 1 -type l -lname "$dir/*" -delete 2>/dev/null || true
    if [[ -e /run/netns/$ns ]]; then
        ip netns del "$ns" 2>/dev/null || true
    fi
    rm -rf "$dir"
    echo "cluster $name down" >&2
}

# Loop devices backed by files under $dir are found while their FUSE files
# are mounted, then every mount under $dir is detached (deepest first), then
# those loop devices (the same order as scripts/sanity-lib.sh).
sweep_mounts() {
    local f dev m loops
    for _ in 1 2 3; do
        loops=()
        for f in /sys/block/loop*/loop/backing_file; do
            [[ -r $f ]] || continue
            if [[ $(<"$f") == "$dir"/* ]]; then
                dev=${f#/sys/block/}
                loops+=("/dev/${dev%%/*}")
            fi
        done
        while read -r m; do
            umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
        done < <(awk -v w="$dir/" 'index($2, w) == 1 { print $2 }' /proc/self/mounts | sort -r)
        for dev in "${loops[@]}"; do
            losetup -d "$dev" 2>/dev/null || true
        done
    done
}

remove_cgroups() {
    local h d
    for h in "${hierarchies[@]}" unified; do
        d=/sys/fs/cgroup/$h$cgroup
        [[ -d $d ]] || continue
        find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
}

down() {
    [[ $(id -u) == 0 ]] || die "needs root"
    down_named "$1"
}

# ---- link ---------------------------------------------------------------------

# A veth pair floe-e2e-link between clusters $1 and $2 (198.19.255.<index>),
# with routes to each other's node and pod addresses; nothing else is routed.
link() {
    local a=$1 b=$2 ia ib neta netb
    names "$a"; ia=$(cat "$dir/index"); addresses "$ia"; neta=$cluster_net
    names "$b"; ib=$(cat "$dir/index"); addresses "$ib"; netb=$cluster_net
    ip link add floe-e2e-l-$ia netns "floe-e2e-$a" type veth peer name floe-e2e-l-$ib netns "floe-e2e-$b"
    nsenter --net="/run/netns/floe-e2e-$a" -- ip addr add "198.19.255.$ia/24" dev "floe-e2e-l-$ia"
    nsenter --net="/run/netns/floe-e2e-$b" -- ip addr add "198.19.255.$ib/24" dev "floe-e2e-l-$ib"
    nsenter --net="/run/netns/floe-e2e-$a" -- ip link set "floe-e2e-l-$ia" up
    nsenter --net="/run/netns/floe-e2e-$b" -- ip link set "floe-e2e-l-$ib" up
    nsenter --net="/run/netns/floe-e2e-$a" -- ip route add "$netb" via "198.19.255.$ib"
    nsenter --net="/run/netns/floe-e2e-$b" -- ip route add "$neta" via "198.19.255.$ia"
    echo "link $a ($neta) <-> $b ($netb) over 198.19.255.0/24" >&2
}

# ---- main ---------------------------------------------------------------------

cmd=${1:-}
shift || true
case $cmd in
up) up "$@" ;;
down) down "$@" ;;
link) link "$@" ;;
restart) restart "$@" ;;
floe) names "$1"; source "$here/floe.sh"; floe_up ;;
kubectl)
    names "$1"
    shift
    exec nsenter --net="/run/netns/$ns" -- "$("$here/build.sh" kubernetes)/kubectl" --kubeconfig "$dir/admin.kubeconfig" "$@"
    ;;
run)
    names "$1"
    shift
    exec nsenter --net="/run/netns/$ns" -- "$@"
    ;;
*)
    sed -n '2,27p' "$0" >&2
    exit 2
    ;;
esac
