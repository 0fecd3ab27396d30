#!/usr/bin/env bash
# Runs every fuzz target of the module (func FuzzX in a _test.go file outside
# third_party/) for FUZZTIME each (default 10s), one after another, and fails
# on the first crash: Go writes the failing input to the package's
# testdata/fuzz/FuzzX/ and prints the command that repeats it.
#
#   scripts/fuzz.sh                    # all targets, 10s each
#   FUZZTIME=1m scripts/fuzz.sh        # longer
#   scripts/fuzz.sh FuzzIngress        # only targets matching a pattern
#   FUZZ_SAVE_CORPUS=1 scripts/fuzz.sh # also copy what the fuzzer found
#                                      # interesting into testdata/fuzz/
#
# The seed corpora (f.Add in the tests and testdata/fuzz/) also run as
# plain tests in `go test ./...`.
#
# A run fails when the fuzzer found a failing input (it writes it to
# testdata/fuzz/) or failed for a reason of its own, with one exception:
# Go 1.26's fuzz coordinator can race its own time budget and end with a
# bare "context deadline exceeded" and no input (golang/go#75804, fixed in
# Go 1.27). That is reported and the next target runs.
set -euo pipefail
cd "$(dirname "$0")/.."

fuzztime=${FUZZTIME:-10s}
pattern=${1:-.}
module=$(go list -m)
cache=$(go env GOCACHE)/fuzz

targets=$(grep -rl --include='*_test.go' --exclude-dir=third_party -E '^func Fuzz[A-Za-z0-9_]*\(f \*testing\.F\)' . |
	while read -r file; do
		dir=$(dirname "$file")
		grep -oE '^func Fuzz[A-Za-z0-9_]*' "$file" | sed "s|^func |$dir |"
	done | sort -u | grep -E -- "$pattern" || true)
if [ -z "$targets" ]; then
	echo "fuzz.sh: no fuzz target matches $pattern" >&2
	exit 1
fi

# inputs counts the inputs saved in a corpus directory.
inputs() { if [ -d "$1" ]; then find "$1" -type f | wc -l; else echo 0; fi; }

n=0
while read -r dir name; do
	n=$((n + 1))
	echo "== $dir $name ($fuzztime)"
	start=$(date +%s)
	corpus="$dir/testdata/fuzz/$name"
	before=$(inputs "$corpus")
	log=$(mktemp)
	rc=0
	go test "$dir" -run '^$' -fuzz "^${name}\$" -fuzztime "$fuzztime" </dev/null >"$log" 2>&1 || rc=$?
	cat "$log"
	if [ "$rc" != 0 ]; then
		after=$(inputs "$corpus")
		if [ "$after" = "$before" ] && grep -q 'context deadline exceeded' "$log" && ! grep -q 'Failing input written' "$log"; then
			echo "fuzz.sh: $name: Go's fuzz coordinator missed its own deadline, no failing input (golang/go#75804); not a finding" >&2
		else
			rm -f "$log"
			echo "fuzz.sh: $name in $dir failed: the input is in $corpus/ (go test $dir -run $name/ID repeats it)" >&2
			exit 1
		fi
	fi
	rm -f "$log"
	echo "   $name: $(($(date +%s) - start))s"
	if [ "${FUZZ_SAVE_CORPUS:-0}" = 1 ]; then
		src="$cache/$module/${dir#./}/$name"
		if [ -d "$src" ]; then
			mkdir -p "$dir/testdata/fuzz/$name"
			cp -n "$src"/* "$dir/testdata/fuzz/$name/" 2>/dev/null || true
		fi
	fi
done <<<"$targets"
echo "fuzz.sh: $n target(s), $fuzztime each, no crash"
