#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks to build and test floe, and
# nothing that is already there. Toolchains (cargo, go) are checked, never
# downloaded.
set -euo pipefail

APT_PACKAGES=(protobuf-compiler libprotobuf-dev xfsprogs e2fsprogs fio util-linux openssl)
# Fetched by proto/tests/csi_descriptor.rs; keep the two in step.
CSI_SPEC_MODULE=github.com/container-storage-interface/spec@v1.12.0

die() {
    echo "deps: $*" >&2
    exit 1
}

# ------------------------------------------------------------ apt packages
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if ! dpkg -s "$pkg" >/dev/null 2>&1; then
        missing+=("$pkg")
    fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "deps: apt packages present: ${APT_PACKAGES[*]}"
else
    echo "deps: installing apt packages: ${missing[*]}"
    sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "not root and no sudo: install ${missing[*]} by hand"
        sudo=(sudo)
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -q
    "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# ------------------------------------------------------------- toolchains
command -v cargo >/dev/null 2>&1 ||
    die "cargo not found on PATH: install a Rust toolchain (rustup, with rustfmt and clippy); this script does not download toolchains"
cargo fmt --version >/dev/null 2>&1 ||
    die "cargo fmt not available: add the rustfmt component to the Rust toolchain"
cargo clippy --version >/dev/null 2>&1 ||
    die "cargo clippy not available: add the clippy component to the Rust toolchain"
command -v go >/dev/null 2>&1 ||
    die "go not found on PATH: install the Go toolchain; this script does not download toolchains"
echo "deps: $(cargo --version), $(go env GOVERSION)"

# ------------------------------------------------------ Go module prefetch
# Into the default module cache, from a scratch folder outside any module.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
if ! out=$(cd "$scratch" && GOWORK=off go mod download -json "$CSI_SPEC_MODULE" 2>&1); then
    echo "$out" >&2
    die "go mod download $CSI_SPEC_MODULE failed"
fi
dir=$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"$out")
[[ -n $dir && -d $dir ]] || die "go mod download $CSI_SPEC_MODULE gave no folder:"$'\n'"$out"
echo "deps: $CSI_SPEC_MODULE in $dir"
