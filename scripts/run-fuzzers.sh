#!/usr/bin/env bash
# Runs every libFuzzer target in BUILD for SECONDS each, from a scratch copy of its committed seed
# corpus (fuzz/corpus/<name>). A crash, leak, timeout or sanitizer report fails the script.
set -euo pipefail
BUILD=${1:-build-fuzz}
SECONDS_EACH=${2:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
bins=$(ls "$BUILD"/fuzz/fuzz_* "$BUILD"/fuzz_* 2>/dev/null || true)
[ -n "$bins" ] || { echo "no fuzz targets in $BUILD"; exit 1; }
for bin in $bins; do
  [ -x "$bin" ] || continue
  bin=$(realpath "$bin")
  name=$(basename "$bin" | sed 's/^fuzz_//')
  work=$(mktemp -d)
  mkdir -p "$work/corpus"
  cp -r "$root/fuzz/corpus/$name/." "$work/corpus/" 2>/dev/null || true
  echo "== fuzz_$name: ${SECONDS_EACH}s from $(ls "$work/corpus" | wc -l) seeds"
  set +e
  (cd "$work" && "$bin" -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -timeout=10 \
     -print_final_stats=1 -artifact_prefix="$work/" "$work/corpus" > "$work/log" 2>&1)
  rc=$?
  set -e
  grep -E "stat::number_of_executed_units|stat::new_units_added|ERROR|SUMMARY" "$work/log" || true
  if [ $rc -ne 0 ] || ls "$work"/crash-* "$work"/leak-* "$work"/timeout-* "$work"/oom-* >/dev/null 2>&1; then
    tail -40 "$work/log"
    echo "fuzz_$name: FINDING (exit $rc), artifacts in $work"
    exit 1
  fi
  rm -rf "$work"
done
echo "fuzzers: no findings"
