#!/usr/bin/env bash
# Runs one stage of a make target and prints its wall time.
#   scripts/stage.sh NAME CMD [ARGS...]
# After CMD ends, prints `== stage NAME: 12.3 s` (plus `(failed, exit N)` when
# it failed) and exits with CMD's status.
set -uo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 NAME CMD [ARGS...]" >&2
    exit 2
fi
name=$1
shift

start=$(date +%s%N)
"$@"
status=$?
end=$(date +%s%N)

elapsed=$(awk -v ns=$((end - start)) 'BEGIN { printf "%.1f", ns / 1e9 }')
if [[ $status -eq 0 ]]; then
    echo "== stage $name: $elapsed s"
else
    echo "== stage $name: $elapsed s (failed, exit $status)"
fi
exit "$status"
