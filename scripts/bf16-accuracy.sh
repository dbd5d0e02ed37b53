#!/usr/bin/env bash
# bf16 against fp32 on Penn Treebank characters at the paper's shape (issue 21): the same cell,
# seed and data order for 300 updates in fp32 (seeds 1, 2, 3: the spread between seeds) and in
# bf16 (seed 1), each evaluated on the validation split with population statistics; prints the
# table and whether bf16 is within 0.02 bpc of fp32 at seed 1. Needs a CPU with AVX512_BF16 or
# AMX (elsewhere `rbn train --precision bf16` refuses, and so does this script).
#
#   bash scripts/bf16-accuracy.sh [build/rbn]
#
# Environment (defaults: the paper's PTB shape): CELL=bnlstm HIDDEN=1000 BATCH=64 SEQ=100
# STEPS=300 SEEDS="1 2 3" OUT=runs/bf16-accuracy THREADS=0 (all cores).
set -euo pipefail
RBN=${1:-build/rbn}
CELL=${CELL:-bnlstm}
HIDDEN=${HIDDEN:-1000}
BATCH=${BATCH:-64}
SEQ=${SEQ:-100}
STEPS=${STEPS:-300}
SEEDS=${SEEDS:-"1 2 3"}
OUT=${OUT:-runs/bf16-accuracy}
THREADS=${THREADS:-0}
DATA=${DATA:-data/ptb}
mkdir -p "$OUT"

run() {  # precision seed
  local dir="$OUT/$1-seed$2"
  "$RBN" train --task ptb --data "$DATA" --cell "$CELL" --hidden "$HIDDEN" --seq-len "$SEQ" \
    --batch-size "$BATCH" --optimizer adam --lr 0.002 --clip 1 --steps "$STEPS" --eval-every 0 \
    --eval-batches 20 --popstats-batches 10 --log-every 50 --seed "$2" --threads "$THREADS" \
    --precision "$1" --out "$dir" --overwrite 2> "$dir.log" || { tail -n 1 "$dir.log" >&2; exit 1; }
  "$RBN" eval --checkpoint "$dir/last.safetensors" --split valid --streams 8 --precision "$1" \
    --threads "$THREADS" --json "$dir/valid.json" 2>> "$dir.log" > /dev/null || { tail -n 1 "$dir.log" >&2; exit 1; }
}
bpc() { /usr/bin/python3 -c 'import json,sys; print("%.4f" % json.load(open(sys.argv[1]))["bpc"])' "$1"; }

first=${SEEDS%% *}
run bf16 "$first"  # first: a CPU without bf16 stops here, before the long fp32 runs
for s in $SEEDS; do run fp32 "$s"; done
echo "PTB characters, $CELL H=$HIDDEN batch $BATCH windows of $SEQ, $STEPS updates: validation bpc"
for s in $SEEDS; do echo "  fp32 seed $s: $(bpc "$OUT/fp32-seed$s/valid.json")"; done
b=$(bpc "$OUT/bf16-seed$first/valid.json")
f=$(bpc "$OUT/fp32-seed$first/valid.json")
echo "  bf16 seed $first: $b"
/usr/bin/python3 - "$b" "$f" <<'PY'
import sys
b, f = map(float, sys.argv[1:])
print(f"  |bf16 - fp32| at the same seed: {abs(b - f):.4f} ({'within' if abs(b - f) <= 0.02 else 'NOT within'} 0.02)")
PY
