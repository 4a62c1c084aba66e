#!/usr/bin/env bash
# Non-test lines of Rust under a directory (default driver/src) at a commit
# (default the work tree): every .rs file but tests.rs files, each cut at
# its `#[cfg(test)]` module (which this codebase keeps last in a file).
#   scripts/count-lines.sh [DIR] [COMMIT]
set -euo pipefail
dir=${1:-driver/src}
commit=${2:-}
list() {
  if [ -n "$commit" ]; then git ls-tree -r --name-only "$commit" -- "$dir"; else git ls-files -co --exclude-standard -- "$dir"; fi
}
show() {
  if [ -n "$commit" ]; then git show "$commit:$1"; else cat "$1"; fi
}
total=0
while read -r f; do
  case "$f" in *.rs) ;; *) continue ;; esac
  case "$(basename "$f")" in tests.rs) continue ;; esac
  n=$(show "$f" | awk '/^#\[cfg\(test\)\]/ { exit } { n++ } END { print n + 0 }')
  total=$((total + n))
done < <(list)
echo "$total"
