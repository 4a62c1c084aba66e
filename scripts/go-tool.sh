#!/usr/bin/env bash
# Builds a Go command once, into a cache outside the clone, and prints its path.
#   scripts/go-tool.sh <module/cmd/path> <version>
# e.g. scripts/go-tool.sh github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity v5.3.1
#
# The binary lives in ~/.cache/floe/gotools/<go version>/<name>@<version>/<name>
# ($XDG_CACHE_HOME is honoured) and is built only when absent, so a new Go
# release or a new pin builds afresh and nothing is rebuilt otherwise. Build
# output goes to stderr; stdout is the path alone:
#   sanity=$(scripts/go-tool.sh ... ) && "$sanity" --csi.endpoint ...
set -euo pipefail

if [[ $# -ne 2 ]]; then
    echo "usage: $0 <module/cmd/path> <version>" >&2
    exit 2
fi
pkg=$1
version=$2

command -v go >/dev/null 2>&1 || {
    echo "go-tool: go not found on PATH (run make deps)" >&2
    exit 1
}

# `go install` names the binary after the last path element, or the one
# before it when the last is a major-version suffix (…/cmd/foo/v2 → foo).
name=${pkg##*/}
if [[ $name =~ ^v[0-9]+$ ]]; then
    rest=${pkg%/*}
    name=${rest##*/}
fi

goversion=$(go env GOVERSION)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/floe/gotools/$goversion/$name@$version
bin=$cache/$name

if [[ ! -x $bin ]]; then
    echo "go-tool: building $pkg@$version with $goversion into $cache" >&2
    mkdir -p "$cache"
    # Build into a scratch GOBIN, then move: an interrupted build never
    # leaves a half-written binary that later runs would trust.
    scratch=$(mktemp -d "$cache/.build.XXXXXX")
    trap 'rm -rf "$scratch"' EXIT
    (cd "$scratch" && GOWORK=off GOBIN=$scratch go install "$pkg@$version") >&2
    [[ -x $scratch/$name ]] || {
        echo "go-tool: go install produced no $name in $scratch" >&2
        exit 1
    }
    mv -f "$scratch/$name" "$bin"
fi
echo "$bin"
