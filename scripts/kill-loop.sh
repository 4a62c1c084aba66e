#!/usr/bin/env bash
# The kill tests, N times in a row (default 20), each run a fresh test
# process; stops at the first failure and prints each run's result line.
# Issue 8 asks for 20 in a row; docs/ci.md logs them.
#   scripts/kill-loop.sh [RUNS]
set -euo pipefail
runs=${1:-20}
cd "$(dirname "$0")/.."
tests=(--test csi_kill --test dataplane_daemon)
cargo test -p floe-driver --locked "${tests[@]}" --no-run
logs=$(mktemp -d /tmp/kill-loop.XXXXXX)
total=0
for i in $(seq 1 "$runs"); do
    start=$(date +%s)
    if ! cargo test -p floe-driver --locked "${tests[@]}" >"$logs/run-$i.log" 2>&1; then
        echo "run $i of $runs: FAILED, see $logs/run-$i.log"
        exit 1
    fi
    took=$(($(date +%s) - start))
    total=$((total + took))
    echo "run $i of $runs: ok in $took s: $(grep -h 'test result' "$logs/run-$i.log" | sed 's/test result: //' | tr '\n' ' ')"
done
echo "$runs of $runs passed in $total s (logs in $logs)"
