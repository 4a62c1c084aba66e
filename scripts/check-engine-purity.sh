#!/usr/bin/env bash
# floe-engine must stay free of I/O: no async runtime, network, clock or
# randomness crates among its normal (non-dev) dependencies. Clippy's
# disallowed-types/methods (driver/engine/clippy.toml) guard its own code.
set -euo pipefail
cd "$(dirname "$0")/.."
deps=$(cargo tree -p floe-engine -e normal --prefix none --locked | awk '{print $1}' | sort -u)
echo "floe-engine normal dependencies: $(echo $deps | tr '\n' ' ')"
forbidden='^(tokio|async-std|smol|mio|futures|socket2|rand|rand_core|getrandom|fastrand|chrono|time|libc|nix|rustix|tonic|hyper|reqwest)$'
bad=$(echo "$deps" | grep -E "$forbidden" || true)
if [ -n "$bad" ]; then
  echo "floe-engine pulls in forbidden crates: $bad" >&2
  exit 1
fi
echo "floe-engine is pure: no runtime, network, clock or randomness crates"
