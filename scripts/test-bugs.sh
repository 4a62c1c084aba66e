#!/usr/bin/env bash
# Proves the model tests catch each deliberate bug of floe-engine: builds the
# engine with one `bug-*` feature at a time and expects
# `cargo test -p floe-engine --test model` to FAIL; and that the power-cut
# matrix between real processes catches each bug of floe-driver's
# (`tests/sites_powercut.rs`, as root). A bug the tests let
# through fails this script. Each run's output is kept in
# <target>/test-bugs/<feature>.log and shown (last 15 lines) only when the
# bug was not caught or the test could not be built.
set -uo pipefail

BUGS=(bug-no-cow bug-fold-before-decision bug-clear-intent-on-staged bug-accept-lower-seq bug-skip-manifest-hash bug-fold-skips-sync bug-accept-old-incarnation bug-candidates-miss-since-promotion bug-fold-skips-check bug-resume-trusts-block bug-resume-before-sync bug-snapshot-no-cow bug-undo-recaptured bug-rollback-not-candidates)
SCHEDULES=10000

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
logdir=${CARGO_TARGET_DIR:-$root/target}/test-bugs
mkdir -p "$logdir"

seconds_since() {
    awk -v ns=$(($(date +%s%N) - $1)) 'BEGIN { printf "%.1f", ns / 1e9 }'
}

passed=0
failed=0
for bug in "${BUGS[@]}"; do
    log=$logdir/$bug.log
    start=$(date +%s%N)
    cargo=(cargo test -p floe-engine --locked --features "$bug" --test model)

    # Build first: a compile error must not pass for a caught bug.
    if ! "${cargo[@]}" --no-run >"$log" 2>&1; then
        echo "injected bug $bug: the model test does not build with it (log: $log)"
        tail -n 15 "$log"
        failed=$((failed + 1))
    elif FLOE_MODEL_SCHEDULES=$SCHEDULES "${cargo[@]}" >>"$log" 2>&1; then
        echo "injected bug $bug was NOT caught by the model tests (log: $log)"
        tail -n 15 "$log"
        failed=$((failed + 1))
    else
        echo "injected bug $bug: caught"
        passed=$((passed + 1))
    fi
    echo "== stage test-bugs/$bug: $(seconds_since "$start") s"
done

# Bugs of the shells, caught between real processes: the power-cut matrix
# (every cell, a fixed seed) must fail with each. Needs root, like the test.
DRIVER_BUGS=(bug-skip-staging-sync)
dr_cells() {
    local out=() mode point
    for mode in continuous log interval; do
        for point in stage-write staged-unreported between-staged decided image-write handover-leaving; do
            out+=("$mode/dr/$point@1")
        done
    done
    (IFS=,; echo "${out[*]}")
}
for bug in "${DRIVER_BUGS[@]}"; do
    log=$logdir/$bug.log
    start=$(date +%s%N)
    cargo=(cargo test -p floe-driver --locked --features "$bug" --test sites_powercut)
    if ! "${cargo[@]}" --no-run >"$log" 2>&1; then
        echo "injected bug $bug: the power-cut test does not build with it (log: $log)"
        tail -n 15 "$log"
        failed=$((failed + 1))
    # The DR's cells (the bug is the DR's): every DR point in every mode.
    elif FLOE_POWER_CUT_CASES=$(dr_cells) "${cargo[@]}" power_cuts -- --nocapture >>"$log" 2>&1; then
        echo "injected bug $bug was NOT caught by the power-cut matrix (log: $log)"
        tail -n 15 "$log"
        failed=$((failed + 1))
    elif ! grep -q "^trial " "$log"; then
        # A failure before any trial ran (no root, the sites did not start)
        # proves nothing.
        echo "injected bug $bug: the power-cut matrix failed before its first trial (log: $log)"
        tail -n 15 "$log"
        failed=$((failed + 1))
    else
        echo "injected bug $bug: caught ($(grep -m1 -o 'lost its committed image\|differs from the primary[^"]*\|behind its committed epoch' "$log" || echo "see $log"))"
        passed=$((passed + 1))
    fi
    echo "== stage test-bugs/$bug: $(seconds_since "$start") s"
done

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
