#!/usr/bin/env bash
# Runs the real csi-sanity (kubernetes-csi/csi-test v5.5.0) against floe in
# split mode: a node (`floe-dataplane holder` and `serve` on a temp data dir,
# `floe-csi --mode=node` serving its volumes with `--node-admin-listen` on
# 127.0.0.1) and, on a socket of its own, `floe-csi --mode=controller`
# reaching that node with `--node-endpoint` over mutual TLS. csi-sanity
# talks to the node socket (`--csi.endpoint`) and the controller socket
# (`--csi.controllerendpoint`); one run, mount access type, 300 MiB test
# volumes. The CA and the node's and controller's certificates are made
# here with openssl. Prints the spec counts; exits non-zero on any failure
# and when anything of floe is left mounted or attached afterwards.
#
#   scripts/csi-sanity-split.sh      (needs root, /dev/fuse, loop devices, go, openssl)
#   FLOE_SANITY_FOCUS=Node scripts/csi-sanity-split.sh    only specs matching Node
#
# The specs csi-sanity skips are those of scripts/csi-sanity.sh, for the
# same reasons (18, printed by name after the run).
set -euo pipefail

cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
target_dir=${CARGO_TARGET_DIR:-target}
size=314572800
node_id=floe-sanity-node

if [[ $(id -u) -ne 0 || ! -e /dev/fuse || ! -e /dev/loop-control ]]; then
    echo "csi-sanity-split: needs root, /dev/fuse and /dev/loop-control" >&2
    exit 1
fi
command -v openssl >/dev/null 2>&1 || {
    echo "csi-sanity-split: needs openssl (scripts/deps.sh installs it)" >&2
    exit 1
}

echo "csi-sanity-split: building floe-csi and floe-dataplane" >&2
$CARGO build -p floe-driver --bin floe-csi --bin floe-dataplane --locked >&2
plugin_bin=$target_dir/debug/floe-csi
dataplane_bin=$target_dir/debug/floe-dataplane
sanity=$(scripts/go-tool.sh github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity v5.5.0)

# shellcheck source=scripts/sanity-lib.sh
source scripts/sanity-lib.sh

work=$(mktemp -d /tmp/floe-csi-sanity-split.XXXXXX)
controller_pid=
node_pid=
serve_pid=
holder_pid=

# The controller, the node plugin, then the data plane (SIGTERM), then the
# holder (with nothing attached any more, the data plane hands nothing over).
stop_all() {
    stop_pid "$controller_pid"
    stop_pid "$node_pid"
    stop_pid "$serve_pid"
    stop_pid "$holder_pid"
    controller_pid= node_pid= serve_pid= holder_pid=
}

# The address the node plugin bound for NodeVolumes ($1: its log; $2: its
# pid), from its start-up line; it listens on port 0, so no port can clash.
wait_admin_addr() {
    local addr
    for _ in $(seq 300); do
        addr=$(sed -n 's/.*serving NodeVolumes over mutual TLS.*addr=\([0-9.:]*\).*/\1/p' "$1" | head -1)
        [[ -n $addr ]] && { echo "$addr"; return 0; }
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

cleanup() {
    local rc=$?
    stop_all
    sweep
    rm -rf "$work"
    if ! scripts/check-leftovers.sh; then
        rc=1
    fi
    exit "$rc"
}
trap cleanup EXIT

# A CA, the node's server certificate (for 127.0.0.1) and the controller's
# client certificate, in $1.
make_certs() {
    local d=$1 ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    mkdir -p "$d"
    openssl req -x509 "${ec[@]}" -keyout "$d/ca.key" -out "$d/ca.crt" -days 2 -subj "/CN=floe sanity CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    local side ext
    for side in node controller; do
        if [[ $side == node ]]; then
            ext="subjectAltName=IP:127.0.0.1"$'\n'"extendedKeyUsage=serverAuth"
        else
            # The node serves only the name --peer-name gives (default controller).
            ext="subjectAltName=DNS:controller"$'\n'"extendedKeyUsage=clientAuth"
        fi
        openssl req "${ec[@]}" -keyout "$d/$side.key" -out "$d/$side.csr" -subj "/CN=floe sanity $side" 2>/dev/null
        openssl x509 -req -in "$d/$side.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 2 \
            -out "$d/$side.crt" -extfile <(printf '%s\nbasicConstraints=CA:FALSE\n' "$ext") 2>/dev/null
    done
}

dir=$work/split
mkdir -p "$dir/tmp"
make_certs "$dir/tls"
tls_node=(--tls-cert "$dir/tls/node.crt" --tls-key "$dir/tls/node.key" --tls-ca "$dir/tls/ca.crt")
tls_controller=(--tls-cert "$dir/tls/controller.crt" --tls-key "$dir/tls/controller.key" --tls-ca "$dir/tls/ca.crt")
node_sock=$dir/node.sock
controller_sock=$dir/controller.sock
run=$dir/run
logs=("$dir/holder.log" "$dir/serve.log" "$dir/node.log" "$dir/controller.log")

start_failed() {
    echo "csi-sanity-split: $1 did not start; the logs:" >&2
    local f
    for f in "${logs[@]}"; do
        [[ -e $f ]] && { echo "--- $f" >&2; cat "$f" >&2; }
    done
    exit 1
}

start_dataplane "$dir" || start_failed "the data plane (floe-dataplane holder and serve)"
"$plugin_bin" --mode=node --endpoint "unix://$node_sock" --node-id "$node_id" \
    --dataplane-socket "$run/dataplane.sock" --node-admin-listen 127.0.0.1:0 "${tls_node[@]}" \
    >"$dir/node.log" 2>&1 &
node_pid=$!
wait_socket "$node_sock" "$node_pid" || start_failed "floe-csi --mode=node"
admin=$(wait_admin_addr "$dir/node.log" "$node_pid") || start_failed "NodeVolumes of floe-csi --mode=node"
"$plugin_bin" --mode=controller --endpoint "unix://$controller_sock" --node-id floe-sanity-controller \
    --node-endpoint "$node_id=https://$admin" "${tls_controller[@]}" >"$dir/controller.log" 2>&1 &
controller_pid=$!
wait_socket "$controller_sock" "$controller_pid" || start_failed "floe-csi --mode=controller"
echo "csi-sanity-split: node $node_id serves NodeVolumes on $admin" >&2

focus=()
[[ -n ${FLOE_SANITY_FOCUS:-} ]] && focus=(--ginkgo.focus "$FLOE_SANITY_FOCUS")
echo "== csi-sanity [split]" >&2
rc=0
TMPDIR=$dir/tmp "$sanity" \
    --csi.endpoint "$node_sock" \
    --csi.controllerendpoint "$controller_sock" \
    --csi.mountdir "$dir/mnt" \
    --csi.stagingdir "$dir/staging" \
    --csi.testvolumesize "$size" \
    --ginkgo.no-color \
    --ginkgo.v \
    "${focus[@]}" >"$dir/sanity.log" 2>&1 || rc=$?
stop_all
read_summary split "$dir/sanity.log"
if [[ -n ${FLOE_SANITY_LOGS:-} ]]; then
    mkdir -p "$FLOE_SANITY_LOGS"
    cp "$dir/sanity.log" "$FLOE_SANITY_LOGS/sanity-split.log"
    for f in "${logs[@]}"; do
        cp "$f" "$FLOE_SANITY_LOGS/split-$(basename "$f")"
    done
fi
if [[ $rc -ne 0 ]]; then
    echo "csi-sanity-split: FAILED (exit $rc); failures:" >&2
    grep -E '^\s*\[FAIL\]|^  \[FAILED\]|\[FAIL\]' "$dir/sanity.log" >&2 || true
    echo "--- last lines of the csi-sanity log:" >&2
    tail -60 "$dir/sanity.log" >&2
    for f in "$dir/controller.log" "$dir/node.log" "$dir/serve.log"; do
        echo "--- last lines of $(basename "$f"):" >&2
        tail -40 "$f" >&2
    done
fi
sweep
echo "csi-sanity [split]: $summary"
if [[ $rc -ne 0 ]]; then
    echo "csi-sanity-split: FAILED"
    exit 1
fi
echo "csi-sanity-split: the run passed"
