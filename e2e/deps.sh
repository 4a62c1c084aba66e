#!/usr/bin/env bash
# Installs the Debian packages the e2e clusters use, only those missing: runc
# and the CNI plugins (Debian's builds; building runc needs cgo and
# libseccomp), busybox-static (the records image's shell), iproute2, curl,
# openssl, util-linux (nsenter).
set -euo pipefail
pkgs=(runc containernetworking-plugins busybox-static iproute2 curl openssl util-linux)
missing=()
for p in "${pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "e2e deps: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi
