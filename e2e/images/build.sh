#!/usr/bin/env bash
# Builds the e2e images into $1/bin (called by e2e/build.sh; $2 is their
# version, a hash of these sources): the static Go programs pause and records,
# then pause.tar and records.tar, OCI image archives for `ctr images import`.
# The records image also carries Debian's busybox-static (for `kubectl exec sh`)
# when it is installed.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=e2e/versions.env
source "$here/../versions.env"
out=$1/bin
mkdir -p "$out"
cd "$here"
for p in pause records mkimage; do
    CGO_ENABLED=0 nice -n 10 go build -trimpath -ldflags "-s -w" -o "$out/$p" "./$p"
done
"$out/mkimage" -name "floe-e2e.invalid/pause:$PAUSE_VERSION" -out "$out/pause.tar" \
    -entrypoint /pause "$out/pause=pause"
extra=()
[[ -x /bin/busybox ]] && extra+=(/bin/busybox=bin/busybox /bin/busybox=bin/sh)
"$out/mkimage" -name "floe-e2e.invalid/records:$2" -out "$out/records.tar" \
    -entrypoint /bin/records "$out/records=bin/records" "${extra[@]}"
echo "$2" >"$out/records.tag"
