#!/usr/bin/env bash
# Runs a go command against pristine upstream gVisor, without the patches in
# third_party/patches/gvisor: shows what they fix. For example
#
#   scripts/unpatched.sh go test ./netstack -run TestReceiveWindowShrink -v
#   scripts/unpatched.sh go build -o /tmp/unpatched/ ./cmd/...
#
# It uses a temporary copy of go.mod without the replace (the repository is
# not touched) and needs the Go module proxy for the pristine module.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp "$top/go.mod" "$tmp/go.mod"
cp "$top/go.sum" "$tmp/go.sum"
go mod edit -modfile="$tmp/go.mod" -dropreplace=gvisor.dev/gvisor
cd "$top"
GOFLAGS="-modfile=$tmp/go.mod -mod=mod" "$@"
