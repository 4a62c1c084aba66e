#!/usr/bin/env bash
# Fails when a test left something of floe behind on the machine: a mount
# that mentions floe, a loop device backed by a file under a path containing
# floe (or by floe's FUSE file whose mount was detached), a network namespace
# whose name starts with floe (the netns test rig's `floe-rig-*`, e2e's
# `floe-e2e-*`) or a network link in the root namespace named floe* (the rig
# makes its veths and bridges inside its namespaces: one here is a leak).
# Prints each.
set -uo pipefail

found=0
report() {
    echo "leftover: $*"
    found=$((found + 1))
}

# Mounts (source, target, type or options mentioning floe).
if [[ -r /proc/mounts ]]; then
    while IFS= read -r line; do
        report "mount: $line"
    done < <(grep -i floe /proc/mounts || true)
fi

# Loop devices, from sysfs (no dependency on losetup). The backing path may
# end in " (deleted)" when the file was removed under the device.
for f in /sys/block/loop*/loop/backing_file; do
    [[ -r $f ]] || continue
    backing=$(<"$f")
    # "/volume": floe's FUSE file after its mount was detached lazily (the
    # kernel then shows the path from the detached mount's root).
    if [[ $backing == *floe* || $backing == /volume || $backing == "/volume (deleted)" ]]; then
        dev=${f#/sys/block/}
        report "loop device /dev/${dev%%/*} backed by $backing"
    fi
done

# Network namespaces: named ones live in /run/netns (what `ip netns list` reads).
for dir in /run/netns /var/run/netns; do
    [[ -d $dir ]] || continue
    for ns in "$dir"/floe*; do
        [[ -e $ns ]] || continue
        report "network namespace ${ns##*/} ($ns)"
    done
    # /var/run is a symlink to /run on Debian: look once.
    [[ $dir -ef /run/netns ]] && break
done

# Network links of the root namespace (what `ip link` shows), from sysfs.
for link in /sys/class/net/floe*; do
    [[ -e $link ]] || continue
    report "network link ${link##*/} in the root namespace (remove: ip link del ${link##*/})"
done

if [[ $found -gt 0 ]]; then
    echo "check-leftovers: $found leftover(s) of floe on this machine"
    exit 1
fi
echo "check-leftovers: no floe mounts, loop devices, network namespaces or links"
