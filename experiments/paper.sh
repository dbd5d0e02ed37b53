#!/usr/bin/env bash
# The paper's experiments at a budget that fits a 2-core machine (docs/results.md has the results
# and the paper's numbers beside them). Each stage writes runs/paper/<stage>/ and a figure in
# docs/figures/. Stages: ptb pfashion seqfashion longer popstats gradflow (default: all, in that
# order; `ptbgru` and `pfashiongru` add the GRU family, issue 17, after ptb and pfashion: not in
# the default list).
#
#   bash experiments/paper.sh [stage ...]        # BUILD=build, OUT=runs/paper, budgets below
#
# PARALLEL=1 runs a stage's training runs at the same time (two or three; give each one thread:
# OMP_NUM_THREADS=1);
# SKIP_DONE=1 skips a run whose test result is already in $OUT (a stage finished in part).
set -euo pipefail
BUILD=${BUILD:-build}
OUT=${OUT:-runs/paper}
FIG=${FIG:-docs/figures}
PTB_STEPS=${PTB_STEPS:-2000}
PIX_STEPS=${PIX_STEPS:-1000}
FM=${FM:-/usr/share/datasets/fashion-mnist}
RBN="$BUILD/rbn"
mkdir -p "$OUT" "$FIG"
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(ptb pfashion seqfashion longer popstats gradflow)

# start CMD...: run it now, or in the background under PARALLEL=1; finish: wait for those started
# (a failed run fails the script).
pids=()
start() { if [ "${PARALLEL:-0}" = 1 ]; then "$@" & pids+=($!); else "$@"; fi; }
finish() {
  local p
  for p in "${pids[@]}"; do wait "$p"; done
  pids=()
}
done_already() { [ "${SKIP_DONE:-0}" = 1 ] && [ -f "$OUT/$1/test.json" ]; }

# Penn Treebank characters: H=256, windows of 100, batch 32, Adam 2e-3 (the paper: H=1000, 64,
# Adam 2e-3, 100-step windows), validation over 20 batches of windows every 200 steps with
# population statistics; then the whole test split as one sequence (8 streams).
# ptb_run CELL [TAG FLAG...]: the run goes to $OUT/ptb-CELL[TAG], the flags added to its training.
ptb_run() {
  local cell=$1 tag=${2:-}
  local run=ptb-$cell$tag
  shift $(($# < 2 ? $# : 2))
  done_already "$run" && return 0
  "$RBN" train --task ptb --data data/ptb --cell "$cell" --hidden 256 --seq-len 100 --batch-size 32 \
    --optimizer adam --lr 0.002 --clip 1 --steps "$PTB_STEPS" --eval-every 200 --eval-batches 20 \
    --popstats-batches 10 --log-every 50 --seed 1 "$@" --out "$OUT/$run" --overwrite 2> "$OUT/$run.log"
  "$RBN" eval --checkpoint "$OUT/$run/best.safetensors" --split test --streams 8 \
    --json "$OUT/$run/test.json" 2>> "$OUT/$run.log"
}

ptb() {
  for cell in lstm bnlstm lnlstm; do ptb_run "$cell"; done
  "$RBN" plot "$OUT"/ptb-{lstm,bnlstm,lnlstm}/metrics.jsonl --labels lstm,bnlstm,lnlstm --metric bpc \
    --title "Penn Treebank characters: validation bpc (H=256, batch 32, Adam 2e-3)" --out "$FIG/ptb-curves.png"
}

# Permuted pixel-by-pixel Fashion-MNIST (784 steps, Debian's dataset-fashion-mnist): H=100, batch
# 100, RMSProp 1e-3, gradient clipping 1, BN-LSTM with h0 noise 0.1 (the paper's MNIST setting),
# validation on 1000 held-out training images every 100 steps, test on the 10,000 test images.
# One pixel-task run: train, then test the best checkpoint. pixel_run TASK NAME CELL [TAG FLAG...]:
# the run goes to $OUT/NAME-CELL[TAG], the flags added to its training.
pixel_run() {
  local task=$1 name=$2 cell=$3 tag=${4:-} extra=()
  local run=$name-$cell$tag
  shift $(($# < 4 ? $# : 4))
  done_already "$run" && return 0
  case "$cell" in
    bnlstm | bngru) extra=(--h0-noise 0.1) ;;
    lnlstm | lngru) extra=(--ln-input false) ;;
  esac
  "$RBN" train --task "$task" --data "$FM" --cell "$cell" --hidden 100 --batch-size 100 \
    --optimizer rmsprop --lr 0.001 --clip 1 --steps "$PIX_STEPS" --eval-every 100 --eval-batches 10 \
    --popstats-batches 10 --log-every 25 --seed 1 "${extra[@]}" "$@" --out "$OUT/$run" --overwrite \
    2> "$OUT/$run.log"
  "$RBN" eval --checkpoint "$OUT/$run/best.safetensors" --split test \
    --json "$OUT/$run/test.json" 2>> "$OUT/$run.log"
}

pfashion() {
  for cell in lstm bnlstm lnlstm; do pixel_run pmnist pfashion "$cell"; done
  "$RBN" plot "$OUT"/pfashion-{lstm,bnlstm,lnlstm}/metrics.jsonl --labels lstm,bnlstm,lnlstm --metric accuracy \
    --title "permuted Fashion-MNIST, 784 steps: validation accuracy (H=100, RMSProp 1e-3)" \
    --out "$FIG/pfashion-curves.png"
}

# The GRU family (issue 17) beside the LSTMs, with exactly the settings above: PTB characters and
# permuted Fashion-MNIST (bngru with h0 noise 0.1 as bnlstm, lngru without the input LN as lnlstm:
# one input feature). The figures put the six cells side by side at equal steps.
ptbgru() {
  for cell in gru bngru lngru; do start ptb_run "$cell"; done
  finish
  "$RBN" plot "$OUT"/ptb-{lstm,bnlstm,lnlstm,gru,bngru,lngru}/metrics.jsonl \
    --labels lstm,bnlstm,lnlstm,gru,bngru,lngru --metric bpc \
    --title "Penn Treebank characters: validation bpc, LSTMs and GRUs (H=256, batch 32, Adam 2e-3)" \
    --out "$FIG/ptb-gru-curves.png"
}

pfashiongru() {
  for cell in gru bngru lngru; do start pixel_run pmnist pfashion "$cell"; done
  finish
  "$RBN" plot "$OUT"/pfashion-{lstm,bnlstm,lnlstm,gru,bngru,lngru}/metrics.jsonl \
    --labels lstm,bnlstm,lnlstm,gru,bngru,lngru --metric accuracy \
    --title "permuted Fashion-MNIST: validation accuracy, LSTMs and GRUs (H=100, RMSProp 1e-3)" \
    --out "$FIG/pfashion-gru-curves.png"
}

# Sequential (unpermuted) pixel-by-pixel Fashion-MNIST, the same settings, lstm against bnlstm.
seqfashion() {
  for cell in lstm bnlstm; do pixel_run seqmnist seqfashion "$cell"; done
  "$RBN" plot "$OUT"/seqfashion-{lstm,bnlstm}/metrics.jsonl --labels lstm,bnlstm --metric accuracy \
    --title "sequential Fashion-MNIST, 784 steps: validation accuracy (H=100, RMSProp 1e-3)" \
    --out "$FIG/seqfashion-curves.png"
}

# Bidirectional BN-LSTM (issue 19) against the one-directional runs of pfashion and seqfashion:
# the same settings and steps, one forward and one reverse direction of H=100 each.
bidir() {
  start pixel_run seqmnist seqfashion bnlstm -bidir --bidirectional
  start pixel_run pmnist pfashion bnlstm -bidir --bidirectional
  finish
  local name title
  for name in seqfashion pfashion; do
    title="sequential Fashion-MNIST"
    [ "$name" = pfashion ] && title="permuted Fashion-MNIST"
    "$RBN" plot "$OUT"/$name-bnlstm{,-bidir}/metrics.jsonl --labels bnlstm,bnlstm-bidirectional \
      --metric accuracy --out "$FIG/$name-bidir-curves.png" \
      --title "$title: one-directional vs bidirectional BN-LSTM (H=100 per direction)"
  done
}

# Zoneout on PTB characters (issue 19): Krueger et al.'s character-level rates (h 0.05, c 0.5) on
# lstm and bnlstm against the ptb stage's runs without it, at the same budget.
zoneout() {
  for cell in lstm bnlstm; do start ptb_run "$cell" -zoneout --zoneout-h 0.05 --zoneout-c 0.5; done
  finish
  "$RBN" plot "$OUT"/ptb-{lstm,lstm-zoneout,bnlstm,bnlstm-zoneout}/metrics.jsonl \
    --labels lstm,lstm+zoneout,bnlstm,bnlstm+zoneout --metric bpc --out "$FIG/ptb-zoneout-curves.png" \
    --title "Penn Treebank characters: validation bpc with zoneout (h 0.05, c 0.5) and without"
}

# Generalization to longer sequences: the PTB models (trained on windows of 100) on test windows of
# 100, 200, 500 and 1000 characters, BN steps >= 100 using the last step's statistics.
longer() {
  "$RBN" reproduce longer --checkpoints "$OUT/ptb-lstm/best.safetensors,$OUT/ptb-bnlstm/best.safetensors,$OUT/ptb-lnlstm/best.safetensors" \
    --lengths 100,200,500,1000 --out "$OUT/longer" | tee "$OUT/longer/table.txt"
}

# Population statistics across time steps: the permuted Fashion-MNIST and the PTB BN-LSTMs.
popstats() {
  /usr/bin/python3 tools/plot_popstats.py "$OUT/pfashion-bnlstm/best.safetensors" --out "$FIG/popstats.png" \
    --title "BN-LSTM, permuted Fashion-MNIST: population statistics (pass) across the 784 steps" \
    | tee "$OUT/popstats.json"
  /usr/bin/python3 tools/plot_popstats.py "$OUT/ptb-bnlstm/best.safetensors" --out "$FIG/popstats-ptb.png" \
    --title "BN-LSTM, Penn Treebank characters: population statistics (pass) across the 100 steps" \
    | tee "$OUT/popstats-ptb.json"
}

# The paper's figure 1: gradient norms at initialization, BN tanh RNN and BN-LSTM, gamma 0.1..1.
gradflow() {
  "$RBN" reproduce gradflow --data data/mnist --out "$OUT/gradflow"
  cp "$OUT/gradflow/gradflow.png" "$FIG/gradflow.png"
}

mkdir -p "$OUT/longer"
for s in "${stages[@]}"; do
  echo "== $s ($(date +%H:%M:%S))"
  "$s"
done
echo "== done ($(date +%H:%M:%S))"
