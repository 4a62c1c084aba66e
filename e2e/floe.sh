# floe on a running e2e cluster, as Kubernetes runs a CSI driver (sourced by
# e2e/cluster.sh after `names`): on the node `floe-dataplane holder`,
# `floe-dataplane serve`, `floe-csi --mode=node` (serving its volumes to the
# controller over mutual TLS) and floe-registrar (e2e/registrar: our own
# kubelet plugin registration; the module proxy serves no
# csi-node-driver-registrar), which registers the plugin with kubelet; beside them `floe-csi --mode=controller`
# and the real csi-provisioner, csi-resizer, csi-snapshotter and snapshot-controller (with
# the VolumeSnapshot and VolumeGroupSnapshot CRDs of the snapshotter's client
# module); then the CSIDriver object (attachRequired: false), the
# StorageClass, VolumeSnapshotClass and VolumeGroupSnapshotClass `floe`. Every process is a host process in the
# cluster's network namespace; `e2e/cluster.sh down` stops them with the rest.
#
# The floe binaries come from $FLOE_E2E_FLOE_BIN, else
# ${CARGO_TARGET_DIR:-target}/debug (build them first: cargo build -p floe-driver --bins).

floe_up() {
    [[ -f $dir/index ]] || die "cluster $name is not up"
    addresses "$(cat "$dir/index")"
    bins
    local floe_bin=${FLOE_E2E_FLOE_BIN:-${CARGO_TARGET_DIR:-$repo/target}/debug}
    [[ -x $floe_bin/floe-csi && -x $floe_bin/floe-dataplane ]] ||
        die "no floe-csi/floe-dataplane in $floe_bin (cargo build -p floe-driver --bins)"
    local registrar_bin provisioner_bin snapshotter_bin resizer_bin
    registrar_bin=$("$here/build.sh" registrar)
    provisioner_bin=$("$here/build.sh" provisioner)
    snapshotter_bin=$("$here/build.sh" snapshotter)
    resizer_bin=$("$here/build.sh" resizer)
    if alive floe-csi-node; then
        echo "floe already runs on $name" >&2
        return 0
    fi

    local f=$dir/floe plugin=$dir/kubelet/root/plugins/floe.csi.dev
    mkdir -p "$f/run" "$f/data" "$plugin" "$dir/kubelet/root/plugins_registry"
    chmod 700 "$f/run" "$f/data"
    start floe-holder "$floe_bin/floe-dataplane" holder --run-dir "$f/run"
    wait_for floe-holder 30 test -S "$f/run/holder.sock"
    start floe-serve "$floe_bin/floe-dataplane" serve --data-dir "$f/data" --run-dir "$f/run"
    wait_for floe-serve 30 test -S "$f/run/dataplane.sock"
    start floe-csi-node "$floe_bin/floe-csi" --mode=node --endpoint "unix://$plugin/csi.sock" \
        --node-id "$node" --dataplane-socket "$f/run/dataplane.sock" \
        --node-admin-listen "$node_ip:9443" \
        --tls-cert "$pki/floe-node.crt" --tls-key "$pki/floe-node.key" --tls-ca "$pki/ca.crt"
    wait_for floe-csi-node 30 test -S "$plugin/csi.sock"
    start floe-registrar "$registrar_bin/floe-registrar" \
        --csi-address "$plugin/csi.sock" --kubelet-registration-path "$plugin/csi.sock" \
        --plugin-registration-path "$dir/kubelet/root/plugins_registry" --timeout 30s
    start floe-csi-controller "$floe_bin/floe-csi" --mode=controller \
        --endpoint "unix://$f/controller.sock" --node-id "$node-controller" \
        --node-endpoint "$node=https://$node_ip:9443" \
        --tls-cert "$pki/floe-controller.crt" --tls-key "$pki/floe-controller.key" --tls-ca "$pki/ca.crt"
    wait_for floe-csi-controller 30 test -S "$f/controller.sock"
    start csi-provisioner "$provisioner_bin/csi-provisioner" --csi-address "$f/controller.sock" \
        --kubeconfig "$dir/admin.kubeconfig" --leader-election=false --timeout 120s \
        --v 2

    start csi-resizer "$resizer_bin/csi-resizer" --csi-address "$f/controller.sock" \
        --kubeconfig "$dir/admin.kubeconfig" --leader-election=false --timeout 120s \
        --handle-volume-inuse-error=false --v 2

    # Snapshots: the CRDs of the snapshotter's client module, the
    # snapshot-controller and csi-snapshotter, both with VolumeGroupSnapshot on.
    kc apply --server-side -f "$snapshotter_bin/../crd" >/dev/null
    kc wait --for condition=established --timeout 60s -f "$snapshotter_bin/../crd" >/dev/null
    start snapshot-controller "$snapshotter_bin/snapshot-controller" \
        --kubeconfig "$dir/admin.kubeconfig" --leader-election=false \
        --feature-gates CSIVolumeGroupSnapshot=true --v 2
    start csi-snapshotter "$snapshotter_bin/csi-snapshotter" --csi-address "$f/controller.sock" \
        --kubeconfig "$dir/admin.kubeconfig" --leader-election=false --timeout 120s \
        --feature-gates CSIVolumeGroupSnapshot=true --v 2

    kc apply -f - >/dev/null <<EOF
apiVersion: storage.k8s.io/v1
kind: CSIDriver
metadata:
  name: floe.csi.dev
spec:
  attachRequired: false
  podInfoOnMount: false
  fsGroupPolicy: File
  volumeLifecycleModes: [Persistent]
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: floe
provisioner: floe.csi.dev
reclaimPolicy: Delete
volumeBindingMode: WaitForFirstConsumer
allowVolumeExpansion: true
---
# xfs: it grows online with CAP_SYS_ADMIN alone (ext4 needs CAP_SYS_RESOURCE,
# which root lacks on this machine).
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: floe-xfs
provisioner: floe.csi.dev
reclaimPolicy: Delete
volumeBindingMode: WaitForFirstConsumer
allowVolumeExpansion: true
parameters:
  fsType: xfs
---
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshotClass
metadata:
  name: floe
driver: floe.csi.dev
deletionPolicy: Delete
---
apiVersion: groupsnapshot.storage.k8s.io/v1beta2
kind: VolumeGroupSnapshotClass
metadata:
  name: floe
driver: floe.csi.dev
deletionPolicy: Delete
EOF
    # Registered when kubelet's CSINode lists the driver.
    wait_for floe-registrar 60 csinode_has_floe
    echo "floe up on $name: StorageClass floe, driver floe.csi.dev on node $node" >&2
}

csinode_has_floe() {
    [[ $(kc get csinode "$node" -o 'jsonpath={.spec.drivers[*].name}') == *floe.csi.dev* ]]
}
