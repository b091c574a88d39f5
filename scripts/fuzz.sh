#!/usr/bin/env bash
# Fuzzes every jute decoder for the given time each (default 60s).
set -euo pipefail
cd "$(dirname "$0")/../jute"
t=${1:-60s}
for target in $(grep -ho '^func Fuzz[A-Za-z]*' *_test.go | cut -d' ' -f2); do
  echo "== $target ($t)"
  go test -run '^$' -fuzz "^${target}\$" -fuzztime "$t" .
done
