#!/usr/bin/env bash
# Runs the e2e tests (the #[ignore]d tests of the floe-e2e crate) one at a
# time, after building every component into the cache and floe's binaries;
# removes every e2e-* cluster afterwards, also when interrupted. Part of
# `make test` (skipped when not root, or with FLOE_E2E=0).
#   e2e/run-tests.sh                 every test
#   e2e/run-tests.sh NAME            the tests whose name contains NAME
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}

if [[ ${FLOE_E2E:-1} == 0 ]]; then
    echo "e2e: skipped (FLOE_E2E=0)" >&2
    exit 0
fi
if [[ $(id -u) != 0 ]]; then
    echo "e2e: skipped: needs root (network namespaces, cgroups, mounts)" >&2
    exit 0
fi

cleanup() {
    local d
    for d in /var/lib/floe-e2e/e2e-*; do
        [[ -e $d ]] && "$here/cluster.sh" down "$(basename "$d")" || true
    done
    for d in /run/netns/floe-e2e-e2e-*; do
        [[ -e $d ]] && "$here/cluster.sh" down "${d#/run/netns/floe-e2e-}" || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

stage() {
    local name=$1 t0=$SECONDS
    shift
    "$@"
    echo "== stage $name: $((SECONDS - t0)) s" >&2
}

stage e2e-components "$here/build.sh" all >/dev/null
stage e2e-floe-build nice -n 10 cargo build --locked -p floe-driver --bins
stage e2e-tests cargo test --locked -p floe-e2e -- --ignored --test-threads=1 --nocapture ${1:+"$1"}
