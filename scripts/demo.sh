#!/usr/bin/env bash
# The README's main command (make demo): trains a small BN-LSTM on Penn Treebank characters
# (shipped in data/ptb), evaluates it on the test split with population statistics, samples from
# it and plots its learning curve. About 5 minutes on 2 cores.
set -euo pipefail
BUILD=${1:-build}
RBN="$BUILD/rbn"
OUT=${RBN_DEMO_OUT:-runs/demo}
STEPS=${RBN_DEMO_STEPS:-1000}
# a rerun replaces the previous demo run (--overwrite), nothing else in $OUT
echo "== training a BN-LSTM (H=128) on Penn Treebank characters for $STEPS steps"
"$RBN" train --task ptb --data data/ptb --cell bnlstm --hidden 128 --seq-len 100 \
  --batch-size 32 --optimizer adam --lr 0.002 --clip 1.0 --steps "$STEPS" \
  --eval-every 250 --eval-batches 40 --popstats-batches 20 --log-every 25 --seed 1 --out "$OUT" --overwrite
echo
echo "== test bits per character (population statistics from a pass over training data;"
echo "   the test split as 8 contiguous streams, state carried across chunks)"
"$RBN" eval --checkpoint "$OUT/best.safetensors" --split test --streams 8 --json "$OUT/test.json"
echo
echo "== a sample"
"$RBN" sample --checkpoint "$OUT/best.safetensors" --length 300 --temperature 0.8 --seed 3
echo
"$RBN" plot "$OUT/metrics.jsonl" --out "$OUT/curve.png" --title "BN-LSTM on PTB characters (demo)"
echo "== learning curve: $OUT/curve.png; metrics: $OUT/metrics.jsonl"
