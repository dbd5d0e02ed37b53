#!/usr/bin/env bash
# Runs every libFuzzer target in BUILD for SECONDS each, from a scratch copy of its committed seed
# corpus (fuzz/corpus/<name>). Any crash, leak or sanitizer report fails the script.
set -euo pipefail
BUILD=${1:-build-fuzz}
SECONDS_EACH=${2:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
for bin in "$BUILD"/fuzz_*; do
  [ -x "$bin" ] || continue
  name=$(basename "$bin" | sed 's/^fuzz_//')
  work=$(mktemp -d)
  cp -r "$root/fuzz/corpus/$name/." "$work/" 2>/dev/null || true
  echo "== fuzz_$name: ${SECONDS_EACH}s from $(ls "$work" | wc -l) seeds"
  (cd "$work" && "$bin" -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -print_final_stats=1 \
     -artifact_prefix="$work/" "$work" 2>&1 | grep -E "stat::number_of_executed_units|Done|ERROR|SUMMARY" || true)
  if ls "$work"/crash-* "$work"/leak-* "$work"/timeout-* >/dev/null 2>&1; then
    echo "fuzz_$name: findings in $work"; exit 1
  fi
  rm -rf "$work"
done
echo "fuzzers: no findings"
