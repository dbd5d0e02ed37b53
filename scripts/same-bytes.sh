#!/usr/bin/env bash
# Same bytes: trains every cell briefly with the OLD and the NEW rbn binary under the same seed and
# compares the written last.safetensors with cmp. A refactor of the cell engine that keeps the order
# of every float operation passes; any other change shows as a differing checkpoint.
#
# usage: scripts/same-bytes.sh OLD_RBN NEW_RBN [WORKDIR]
# The PTB runs use data/ptb (two layers: the one-hot GEMM input path and a layer fed by the one
# below); the pixel runs (C = 1: W x formed inside the time loop) use data/mnist when it holds
# images. Exit status 1 when any checkpoint differs. REUSE_OLD=1 with a WORKDIR of an earlier
# run skips the old binary's runs. Files that differ only in their metadata (a key the newer
# binary adds, such as gemm_backend) pass when every tensor's bytes are equal; the differing keys
# are printed. Pin the GEMM backend of the binary that has several: RBN_GEMM=openblas.
set -euo pipefail
old=$1 new=$2
work=${3:-$(mktemp -d /tmp/same-bytes.XXXXXX)}
root=$(cd "$(dirname "$0")/.." && pwd)
cells="lstm bnlstm bnx bnx-seq lnlstm rnn bnrnn"
fail=0 runs=0

same_tensors() {  # OLD NEW: every tensor byte-equal; prints the metadata keys that differ
  python3 - "$1" "$2" <<'PY'
import json, struct, sys
def read(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    head = json.loads(b[8:8 + n])
    meta = head.pop("__metadata__", {})
    return {k: (v["dtype"], v["shape"], b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]])
            for k, v in head.items()}, meta
(a, ma), (b, mb) = read(sys.argv[1]), read(sys.argv[2])
print(",".join(sorted(k for k in ma.keys() | mb.keys() if ma.get(k) != mb.get(k))))
sys.exit(0 if a == b else 1)
PY
}

run_pair() {  # name, then the train flags
  local name=$1; shift
  for which in old new; do
    local bin=$old; [[ $which == new ]] && bin=$new
    # REUSE_OLD=1: keep the old binary's checkpoints from an earlier run in the same WORKDIR
    [[ $which == old && ${REUSE_OLD:-0} == 1 && -f $work/old/$name/last.safetensors ]] && continue
    # the same --out for both (the checkpoint's metadata records it), moved aside afterwards
    rm -rf "$work/run" "$work/$which/$name"
    "$bin" train "$@" --out "$work/run" > "$work/$which-$name.log" 2>&1 ||
      { echo "FAIL $name: $which binary exited non-zero (see $work/$which-$name.log)"; fail=1; return; }
    mv "$work/run" "$work/$which/$name"
  done
  runs=$((runs + 1))
  if cmp -s "$work/old/$name/last.safetensors" "$work/new/$name/last.safetensors"; then
    echo "same  $name"
  elif meta=$(same_tensors "$work/old/$name/last.safetensors" "$work/new/$name/last.safetensors"); then
    echo "same  $name (tensors; metadata differs: $meta)"
  else
    echo "DIFF  $name"; fail=1
  fi
}

mkdir -p "$work/old" "$work/new"
common=(--seed 7 --eval-batches 2 --popstats-batches 2 --log-every 5)
lm=("${common[@]}" --eval-every 10 --checkpoint-every 10)
for threads in 1 2; do
  for cell in $cells; do
    run_pair "ptb-$cell-t$threads" --task ptb --data "$root/data/ptb" --cell "$cell" --hidden 40 \
      --layers 2 --seq-len 24 --batch-size 16 --steps 20 --threads "$threads" "${lm[@]}"
  done
done
run_pair "ptb-lnlstm-noinput-t2" --task ptb --data "$root/data/ptb" --cell lnlstm --ln-input 0 \
  --hidden 40 --seq-len 24 --batch-size 16 --steps 20 --threads 2 "${lm[@]}"
run_pair "ptb-bnlstm-embed-learninit-t2" --task ptb --data "$root/data/ptb" --cell bnlstm \
  --embed 6 --learn-init-state 1 --hidden 40 --seq-len 24 --batch-size 16 --steps 20 --threads 2 \
  "${lm[@]}"
if ls "$root"/data/mnist/*images* > /dev/null 2>&1; then
  for cell in $cells; do
    run_pair "pmnist-$cell-t2" --task pmnist --data "$root/data/mnist" --mnist-split-train 200 \
      --mnist-split-valid 50 --cell "$cell" --hidden 24 --batch-size 8 --steps 6 --threads 2 \
      --h0-noise 0.1 "${common[@]}" --eval-every 6 --checkpoint-every 6
  done
fi
echo "$runs pairs compared in $work"
[[ $fail == 0 ]] && echo "same-bytes: all checkpoints identical" || echo "same-bytes: FAILED"
exit $fail
