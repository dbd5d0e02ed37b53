#!/usr/bin/env bash
# Short training runs per cell (lstm, bnlstm, lnlstm) on permuted Fashion-MNIST (784 steps, full
# size, Debian's dataset-fashion-mnist) and on Penn Treebank characters; prints one line each:
# command, steps, wall time, validation figure. Budget: ~15 minutes on 2 cores.
set -euo pipefail
BUILD=${BUILD:-build}
OUT=${OUT:-runs/short}
PIX_STEPS=${PIX_STEPS:-300}
PTB_STEPS=${PTB_STEPS:-600}
mkdir -p "$OUT"
summary="$OUT/summary.md"
echo "| task | cell | steps | wall time | validation | command |" > "$summary"
echo "|---|---|---|---|---|---|" >> "$summary"
run() {
  local task=$1 cell=$2; shift 2
  local dir="$OUT/$task-$cell"
  local cmd="$BUILD/rbn train --cell $cell --out $dir --overwrite $*"
  local t0=$(date +%s)
  $cmd > "$dir.log" 2>&1
  local t1=$(date +%s)
  local valid=$(grep '"split":"valid"' "$dir/metrics.jsonl" | tail -1)
  local fig=$(echo "$valid" | /usr/bin/python3 -c 'import json,sys; j=json.loads(sys.stdin.read()); print(("accuracy %.4f" % j["accuracy"]) if "accuracy" in j else ("bpc %.4f" % j["bpc"]))')
  printf '| %s | %s | %s | %s s | %s | `%s` |\n' "$task" "$cell" "$(echo "$valid" | /usr/bin/python3 -c 'import json,sys; print(json.loads(sys.stdin.read())["step"])')" \
    "$((t1 - t0))" "$fig" "$cmd" | tee -a "$summary"
}
FM=/usr/share/datasets/fashion-mnist
for cell in lstm bnlstm lnlstm; do
  extra=""
  [ "$cell" = bnlstm ] && extra="--h0-noise 0.1"
  [ "$cell" = lnlstm ] && extra="--ln-input false"
  run pfashion $cell --task pmnist --data $FM --hidden 100 --batch-size 100 --optimizer rmsprop --lr 0.001 \
    --clip 1 --steps $PIX_STEPS --eval-every $PIX_STEPS --log-every 25 --popstats-batches 10 --seed 1 $extra
done
for cell in lstm bnlstm lnlstm; do
  run ptb $cell --task ptb --data data/ptb --hidden 256 --seq-len 100 --batch-size 32 --optimizer adam \
    --lr 0.002 --clip 1 --steps $PTB_STEPS --eval-every $PTB_STEPS --log-every 50 --popstats-batches 10 --seed 1
done
