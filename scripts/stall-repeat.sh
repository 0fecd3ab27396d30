#!/usr/bin/env bash
# Repeats the bidirectional bulk transfer that used to stall gVisor's
# netstack (kernel client in ant writing MiB chunks while reading the echo
# at full speed; server on our stack in apple) and prints how many runs
# stalled out of how many, in each link mode the server ships (with
# offloads, the default, and the plain TUN). Needs root (it builds a lab in
# namespaces).
#
#   scripts/stall-repeat.sh [-n RUNS] [-m MIB_PER_RUN] [--unpatched]
#
# --unpatched builds everything against pristine upstream gVisor, without
# third_party/patches/gvisor, to reproduce the stall (on the development
# machine: 2 of 10 runs of 1024 MiB stalled unpatched, 0 of 12 patched).
set -euo pipefail
runs=20 mib=1024 wrap=()
while [ $# -gt 0 ]; do
  case $1 in
    -n) runs=$2; shift 2 ;;
    -m) mib=$2; shift 2 ;;
    --unpatched) wrap=("$(dirname "$0")/unpatched.sh"); shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "stall-repeat.sh: unknown argument $1 (see -h)" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "running $runs runs of $mib MiB each way$([ ${#wrap[@]} -gt 0 ] && echo ' on UNPATCHED gVisor')..."
set +e
TCP_UPPER_STALL_RUNS=$runs TCP_UPPER_STALL_MIB=$mib "${wrap[@]}" go test ./tests/ -run '^TestBulkNoStall$' -count=1 -v -timeout 0 2>&1 | tee "$log" | grep --line-buffered -E 'run [0-9]+:'
set -e
# One "STALLS s/n" line per link mode.
summary=$(grep -o 'STALLS [0-9]*/[0-9]*' "$log" | awk -F'[ /]' '{s+=$2; n+=$3; m++} END {if (m) print s "/" n}')
if [ -z "$summary" ] || [ "$(grep -c 'STALLS' "$log")" -lt 2 ]; then
  echo "no result: the test did not finish:" >&2
  tail -20 "$log" >&2
  exit 1
fi
echo "stalled: $summary runs (both link modes)"
[ "${summary%/*}" = 0 ]
