#!/usr/bin/env bash
# Regenerates third_party/gvisor: the gVisor packages tcp-upper builds on,
# copied unchanged from the pinned upstream module, plus our patches from
# third_party/patches/gvisor/ (go.mod points gvisor.dev/gvisor at it with a
# replace). With --check it regenerates into a temporary directory and fails
# if the committed tree differs: CI proves the copy is upstream + patches.
#
#   scripts/gvisor-vendor.sh           # regenerate after bumping the version
#   scripts/gvisor-vendor.sh --check   # verify (needs the Go module proxy)
#
# To bump gVisor: change VERSION below, run this script, rerun the tests
# (go test ./netstack -run TestReceive shows whether upstream fixed the
# window bug; if it did, delete the patch and the replace).
set -euo pipefail

VERSION=v0.0.0-20260905035102-160fafc42237
# What we import from gVisor; the script copies these and everything they
# import from gVisor. Add a package here, rerun, commit.
PACKAGES=(
  adapters/gonet
  buffer
  tcpip
  tcpip/checksum
  tcpip/faketime
  tcpip/header
  tcpip/link/nested
  tcpip/link/sniffer
  tcpip/network/ipv4
  tcpip/seqnum
  tcpip/stack
  tcpip/transport/icmp
  tcpip/transport/tcp
  waiter
)

top=$(cd "$(dirname "$0")/.." && pwd)
dest=$top/third_party/gvisor
check=0
[ "${1:-}" = "--check" ] && check=1

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Fetch the pristine module.
mkdir -p "$work/probe"
cd "$work/probe"
go mod init probe >/dev/null 2>&1
GOFLAGS=-mod=mod go get "gvisor.dev/gvisor@$VERSION" >/dev/null 2>&1
src=$(GOFLAGS=-mod=mod go list -m -f '{{.Dir}}' gvisor.dev/gvisor)

# The closure of gVisor packages, over every build tag and platform (go mod
# tidy looks at them all): scan each package's non-test sources for imports.
declare -A seen=()
queue=()
for p in "${PACKAGES[@]}"; do
  case $p in adapters/*) queue+=("pkg/tcpip/$p") ;; *) queue+=("pkg/$p") ;; esac
done
deps=()
while [ ${#queue[@]} -gt 0 ]; do
  d=${queue[0]}; queue=("${queue[@]:1}")
  [ -n "${seen[$d]:-}" ] && continue
  seen[$d]=1
  deps+=("$d")
  while read -r imp; do
    [ -n "$imp" ] && [ -z "${seen[$imp]:-}" ] && queue+=("$imp")
  done < <({ find "$src/$d" -maxdepth 1 -name '*.go' ! -name '*_test.go' -exec grep -ho '"gvisor.dev/gvisor/pkg/[^"]*"' {} + || true; } | tr -d '"' | sed 's#^gvisor.dev/gvisor/##' | sort -u)
done
# External modules those packages import, at the versions gVisor requires.
for d in "${deps[@]}"; do
  find "$src/$d" -maxdepth 1 -name '*.go' ! -name '*_test.go' -exec grep -ho '"[a-z0-9.-]*\.[a-z]*/[^"]*"' {} + || true
done | tr -d '"' | grep -v '^gvisor.dev/' | sort -u > "$work/extimports"
extdeps=()
while read -r mod ver; do
  if grep -q -e "^$mod\$" -e "^$mod/" "$work/extimports"; then extdeps+=("$mod $ver"); fi
done < <(sed -n '/^require (/,/^)/p' "$src/go.mod" | grep -v '^require\|^)' | awk '{print $1, $2}')

out=$work/gvisor
mkdir -p "$out"
for d in "${deps[@]}"; do
  mkdir -p "$out/$d"
  # Sources only: no tests, no BUILD files.
  find "$src/$d" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) ! -name '*_test.go' -exec cp {} "$out/$d/" \;
done
cp "$src/LICENSE" "$out/LICENSE"
chmod -R u+w "$out"
{
  echo "module gvisor.dev/gvisor"
  echo
  grep -m1 "^go " "$src/go.mod"
  echo
  echo "require ("
  for e in "${extdeps[@]}"; do echo "	$e"; done
  echo ")"
} > "$out/go.mod"
cat > "$out/README.md" <<MD
# gVisor netstack, as tcp-upper builds it

The packages of gvisor.dev/gvisor@$VERSION that tcp-upper imports (and what
they import), copied unchanged by scripts/gvisor-vendor.sh, with the patches
in ../patches/gvisor/ applied. Do not edit by hand: change a patch and rerun
the script. License: Apache 2.0 (LICENSE), copyright The gVisor Authors.
MD

for patch in "$top"/third_party/patches/gvisor/*.patch; do
  [ -e "$patch" ] || continue
  (cd "$out" && git apply -p1 "$patch") || { echo "patch $(basename "$patch") does not apply to gVisor $VERSION" >&2; exit 1; }
done

if [ $check = 1 ]; then
  if ! diff -r "$out" "$dest" >"$work/diff" 2>&1; then
    echo "third_party/gvisor is not gVisor $VERSION + third_party/patches/gvisor (rerun scripts/gvisor-vendor.sh):" >&2
    head -40 "$work/diff" >&2
    exit 1
  fi
  echo "third_party/gvisor = gVisor $VERSION + $(ls "$top"/third_party/patches/gvisor/*.patch 2>/dev/null | wc -l) patch(es)"
  exit 0
fi
rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
cp -r "$out" "$dest"
echo "wrote $dest: ${#deps[@]} packages of gVisor $VERSION, $(du -sh "$dest" | cut -f1)"
