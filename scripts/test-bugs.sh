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

BUGS=(bug-no-cow bug-fold-before-decision bug-clear-intent-on-staged bug-accept-lower-seq bug-skip-manifest-hash bug-fold-skips-sync bug-accept-old-incarnation bug-candidates-miss-since-promotion bug-fold-skips-check bug-resume-trusts-block bug-resume-before-sync bug-snapshot-no-cow bug-undo-recaptured bug-rollback-not-candidates bug-catch-up-folds-undecided bug-membership-ignored)
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

# expect_caught BUG WHAT RAN WHY VAR=VALUE CARGO...
# Builds CARGO... (a `cargo test` command line) with `--no-run`, then runs
# it with VAR=VALUE in its environment and expects it to FAIL: the
# deliberate bug BUG is caught by WHAT (named in the messages). RAN, when
# not empty, is a pattern the log must hold (a failure before any case ran
# proves nothing); WHY, when not empty, picks the reason shown.
expect_caught() {
    local bug=$1 what=$2 ran=$3 why=$4 var=$5
    shift 5
    local log=$logdir/$bug.log start build=()
    start=$(date +%s%N)
    # Build first: a compile error must not pass for a caught bug.
    for arg in "$@"; do
        [[ $arg == -- ]] && break
        build+=("$arg")
    done
    if ! "${build[@]}" --no-run >"$log" 2>&1; then
        echo "injected bug $bug: $what does not build with it (log: $log)"
        tail -n 15 "$log"
        failed=$((failed + 1))
    elif env "$var" "$@" >>"$log" 2>&1; then
        echo "injected bug $bug was NOT caught by $what (log: $log)"
        tail -n 15 "$log"
        failed=$((failed + 1))
    elif [[ -n $ran ]] && ! grep -q "$ran" "$log"; then
        echo "injected bug $bug: $what failed before its first case ran (log: $log)"
        tail -n 15 "$log"
        failed=$((failed + 1))
    else
        local reason=""
        [[ -n $why ]] && reason=" ($(grep -m1 -o "$why" "$log" || echo "see $log"))"
        echo "injected bug $bug: caught$reason"
        passed=$((passed + 1))
    fi
    echo "== stage test-bugs/$bug: $(seconds_since "$start") s"
}

for bug in "${BUGS[@]}"; do
    expect_caught "$bug" "the model tests" "" "" "FLOE_MODEL_SCHEDULES=$SCHEDULES" \
        cargo test -p floe-engine --locked --features "$bug" --test model
done

# Bugs of the shells, caught between real processes: the power-cut matrix
# must fail with each, on the DR's cells (the bugs are the DR's): every DR
# point in every mode. Needs root, like the test.
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
    expect_caught "$bug" "the power-cut matrix" "^trial " \
        'lost its committed image\|differs from the primary[^"]*\|behind its committed epoch' \
        "FLOE_POWER_CUT_CASES=$(dr_cells)" \
        cargo test -p floe-driver --locked --features "$bug" --test sites_powercut power_cuts -- --nocapture
done

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
