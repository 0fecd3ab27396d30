#!/usr/bin/env bash
# Runs a go command against pristine upstream gVisor, without the patches in
# third_party/patches/gvisor: shows what they fix. For example
#
#   scripts/unpatched.sh go test ./netstack -run TestReceiveWindowShrink -v
#   scripts/unpatched.sh go build -o /tmp/unpatched/ ./cmd/...
#
# It uses a temporary copy of go.mod without the replace (the repository is
# not touched) and needs the Go module proxy for the pristine module. It
# builds with the gvisor_unpatched tag: the API our patches add (patch
# 0009's observe hook) is left out, and the tests of it with it, so the
# other patches' regression tests still build and run. Without the tag
# (give the go command -tags=, which overrides it) netstack does not
# compile against pristine gVisor: the hook does not exist upstream.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp "$top/go.mod" "$tmp/go.mod"
cp "$top/go.sum" "$tmp/go.sum"
go mod edit -modfile="$tmp/go.mod" -dropreplace=gvisor.dev/gvisor
cd "$top"
GOFLAGS="-modfile=$tmp/go.mod -mod=mod -tags=gvisor_unpatched" "$@"
