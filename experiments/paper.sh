#!/usr/bin/env bash
# The paper's experiments at a budget that fits a 2-core machine (docs/results.md has the results
# and the paper's numbers beside them). Each stage writes runs/paper/<stage>/ and a figure in
# docs/figures/. Stages: ptb pfashion seqfashion longer popstats gradflow (default: all, in that
# order; `ptbgru` and `pfashiongru` add the GRU family, issue 17, after ptb and pfashion: not in
# the default list).
#
#   bash experiments/paper.sh [stage ...]        # BUILD=build, OUT=runs/paper, budgets below
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

# Penn Treebank characters: H=256, windows of 100, batch 32, Adam 2e-3 (the paper: H=1000, 64,
# Adam 2e-3, 100-step windows), validation over 20 batches of windows every 200 steps with
# population statistics; then the whole test split as one sequence (8 streams).
ptb_run() {
  local cell=$1
  "$RBN" train --task ptb --data data/ptb --cell "$cell" --hidden 256 --seq-len 100 --batch-size 32 \
    --optimizer adam --lr 0.002 --clip 1 --steps "$PTB_STEPS" --eval-every 200 --eval-batches 20 \
    --popstats-batches 10 --log-every 50 --seed 1 --out "$OUT/ptb-$cell" --overwrite 2> "$OUT/ptb-$cell.log"
  "$RBN" eval --checkpoint "$OUT/ptb-$cell/best.safetensors" --split test --streams 8 \
    --json "$OUT/ptb-$cell/test.json" 2>> "$OUT/ptb-$cell.log"
}

ptb() {
  for cell in lstm bnlstm lnlstm; do ptb_run "$cell"; done
  "$RBN" plot "$OUT"/ptb-{lstm,bnlstm,lnlstm}/metrics.jsonl --labels lstm,bnlstm,lnlstm --metric bpc \
    --title "Penn Treebank characters: validation bpc (H=256, batch 32, Adam 2e-3)" --out "$FIG/ptb-curves.png"
}

# Permuted pixel-by-pixel Fashion-MNIST (784 steps, Debian's dataset-fashion-mnist): H=100, batch
# 100, RMSProp 1e-3, gradient clipping 1, BN-LSTM with h0 noise 0.1 (the paper's MNIST setting),
# validation on 1000 held-out training images every 100 steps, test on the 10,000 test images.
# One pixel-task run: train, then test the best checkpoint. pixel_run TASK NAME CELL
pixel_run() {
  local task=$1 name=$2 cell=$3 extra=()
  case "$cell" in
    bnlstm | bngru) extra=(--h0-noise 0.1) ;;
    lnlstm | lngru) extra=(--ln-input false) ;;
  esac
  "$RBN" train --task "$task" --data "$FM" --cell "$cell" --hidden 100 --batch-size 100 \
    --optimizer rmsprop --lr 0.001 --clip 1 --steps "$PIX_STEPS" --eval-every 100 --eval-batches 10 \
    --popstats-batches 10 --log-every 25 --seed 1 "${extra[@]}" --out "$OUT/$name-$cell" --overwrite \
    2> "$OUT/$name-$cell.log"
  "$RBN" eval --checkpoint "$OUT/$name-$cell/best.safetensors" --split test \
    --json "$OUT/$name-$cell/test.json" 2>> "$OUT/$name-$cell.log"
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
  for cell in gru bngru lngru; do ptb_run "$cell"; done
  "$RBN" plot "$OUT"/ptb-{lstm,bnlstm,lnlstm,gru,bngru,lngru}/metrics.jsonl \
    --labels lstm,bnlstm,lnlstm,gru,bngru,lngru --metric bpc \
    --title "Penn Treebank characters: validation bpc, LSTMs and GRUs (H=256, batch 32, Adam 2e-3)" \
    --out "$FIG/ptb-gru-curves.png"
}

pfashiongru() {
  for cell in gru bngru lngru; do pixel_run pmnist pfashion "$cell"; done
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
