#!/usr/bin/env bash
# Builds one e2e component once into a cache outside the clone and prints its
# bin directory:
#   e2e/build.sh kubernetes|etcd|containerd|provisioner|registrar|snapshotter|resizer|images
#   e2e/build.sh all      (every component, one after the other)
#
# The cache is $FLOE_E2E_CACHE (default /var/cache/floe-e2e)/<component>-<version>/bin.
# A directory that exists is complete: builds go to a scratch directory that
# is renamed into place at the end, so an interrupted build leaves nothing a
# later run would trust. Go builds run under `nice -n 10` (the machine is
# shared); each prints its wall and CPU time on stderr.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=e2e/versions.env
source "$here/versions.env"
cache=${FLOE_E2E_CACHE:-/var/cache/floe-e2e}
export GOFLAGS=-buildvcs=false GOWORK=off

# $1 component, $2 version, then a function that fills "$scratch" (its bin/).
cached() {
    local component=$1 version=$2 fill=$3
    local dir=$cache/$component-$version
    mkdir -p "$cache"
    # One build of a component at a time; a second caller waits and finds it.
    exec {lock}>"$cache/.lock-$component"
    flock "$lock"
    if [[ ! -d $dir/bin ]]; then
        local scratch
        scratch=$(mktemp -d "$cache/.build-$component.XXXXXX")
        # shellcheck disable=SC2064
        trap "rm -rf '$scratch'" EXIT
        echo "e2e build: $component $version into $dir" >&2
        local start=$SECONDS
        TIMEFORMAT="e2e build: $component $version: %R s wall, %U s user, %S s sys"
        time "$fill" "$scratch" "$version" >&2
        echo "$component $version $((SECONDS - start)) s wall, $(go env GOVERSION), $(date -u +%FT%TZ)" >"$scratch/build-time"
        rm -rf "$dir"
        mv "$scratch" "$dir"
        trap - EXIT
    fi
    exec {lock}>&-
    echo "$dir/bin"
}

# Builds the tools of a wrapper module (e2e/<module>/go.mod) into $1/bin.
gobuild() {
    local module=$1 out=$2
    shift 2
    mkdir -p "$out/bin"
    (cd "$here/$module" && CGO_ENABLED=0 nice -n 10 go build -trimpath -o "$out/bin/" "$@")
}

fill_kubernetes() {
    local v=$2 major minor
    major=${v#v}; major=${major%%.*}
    minor=${v#v"$major".}; minor=${minor%%.*}
    local ldflags="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
        ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    gobuild k8s "$1" -ldflags "$ldflags" \
        k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kubectl
}

fill_etcd() {
    gobuild etcd "$1" -ldflags "-s -w" go.etcd.io/etcd/server/v3
    # go build names the module's root package after its path: server.
    mv "$1/bin/server" "$1/bin/etcd"
}

fill_containerd() {
    mkdir -p "$1/bin"
    (cd "$1" && CGO_ENABLED=0 GOBIN=$1/bin nice -n 10 go install -trimpath -ldflags "-s -w" \
        -tags "no_btrfs no_devmapper no_zfs no_aufs" \
        "github.com/containerd/containerd/v2/cmd/containerd@$2" \
        "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$2" \
        "github.com/containerd/containerd/v2/cmd/ctr@$2")
}

fill_provisioner() {
    gobuild provisioner "$1" -ldflags "-s -w -X main.version=$2" \
        github.com/kubernetes-csi/external-provisioner/v6/cmd/csi-provisioner
}

fill_snapshotter() {
    gobuild snapshotter "$1" -ldflags "-s -w -X main.version=$2" \
        github.com/kubernetes-csi/external-snapshotter/v8/cmd/csi-snapshotter \
        github.com/kubernetes-csi/external-snapshotter/v8/cmd/snapshot-controller
    # The CRDs of the client module the build used (VolumeSnapshot*, VolumeGroupSnapshot*).
    local client
    client=$(cd "$here/snapshotter" && go list -m -f '{{.Dir}}' github.com/kubernetes-csi/external-snapshotter/client/v8)
    mkdir -p "$1/crd"
    cp "$client"/config/crd/*storage.k8s.io_*.yaml "$1/crd/"
}

fill_resizer() {
    gobuild resizer "$1" -ldflags "-s -w -X main.version=$2" \
        github.com/kubernetes-csi/external-resizer/v2/cmd/csi-resizer
}

fill_registrar() {
    "$here/registrar/build.sh" "$1" "$2"
}

fill_images() {
    "$here/images/build.sh" "$1" "$2"
}

component() {
    case $1 in
    kubernetes) cached kubernetes "$KUBERNETES_VERSION" fill_kubernetes ;;
    etcd) cached etcd "$ETCD_VERSION" fill_etcd ;;
    containerd) cached containerd "$CONTAINERD_VERSION" fill_containerd ;;
    provisioner) cached csi-provisioner "$PROVISIONER_VERSION" fill_provisioner ;;
    registrar) cached floe-registrar "$REGISTRAR_VERSION" fill_registrar ;;
    snapshotter) cached csi-snapshotter "$SNAPSHOTTER_VERSION" fill_snapshotter ;;
    resizer) cached csi-resizer "$RESIZER_VERSION" fill_resizer ;;
    images) cached images "$(images_version)" fill_images ;;
    *)
        echo "usage: $0 kubernetes|etcd|containerd|provisioner|registrar|snapshotter|resizer|images|all" >&2
        exit 2
        ;;
    esac
}

# The images change with their sources: key them by a hash of them.
images_version() {
    (cd "$here/images" && find . -type f | LC_ALL=C sort | xargs cat | sha256sum | cut -c1-12)
}

if [[ ${1:-} == all ]]; then
    "$here/deps.sh"
    for c in kubernetes etcd containerd provisioner registrar snapshotter resizer images; do component "$c"; done
else
    component "${1:-}"
fi
