#!/usr/bin/env bash
# Builds floe-registrar (main.go beside this script) into $1/bin
# (called by e2e/build.sh; $2 is the version, for --version).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$1/bin"
cd "$here"
CGO_ENABLED=0 nice -n 10 go build -trimpath -ldflags "-s -w -X main.version=$2" \
    -o "$1/bin/floe-registrar" .
