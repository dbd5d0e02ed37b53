#!/usr/bin/env bash
# A/B timing of two rbn binaries: `rbn bench` (no PyTorch) alternating OLD and NEW round by round
# (the first of each round alternates too), then per shape, cell and mode the medians over the
# rounds, new/old, and the old/old spread (how far the medians of the old binary's odd and even
# rounds disagree: the machine's noise). A row fails when new/old > 1.03 + spread.
#
# usage: scripts/bench-ab.sh OLD_RBN NEW_RBN [ROUNDS] [OUTDIR]
#        SUMMARY_ONLY=1 scripts/bench-ab.sh OLD NEW ROUNDS OUTDIR: the table of the rounds done
# env: SHAPES (smnist,ptb), CELLS (all seven), THREADS (2), REPEATS (1), WARMUP (1), GEMM (the
#      binaries' default; binaries with GEMM backends: e.g. openblas,onednn, a row per backend)
# (A binary that times oneDNN's own RNN or bidirectional rows is told not to, --no-onednn-rnn
# --bidir-cells '': the A/B reads only rbn's training and inference times of CELLS.)
set -euo pipefail
old=$1 new=$2 rounds=${3:-7}
out=${4:-$(mktemp -d /tmp/bench-ab.XXXXXX)}
shapes=${SHAPES:-smnist,ptb}
cells=${CELLS:-lstm,bnlstm,bnx,bnx-seq,lnlstm,rnn,bnrnn}
mkdir -p "$out"
for ((r = 1; r <= rounds && ${SUMMARY_ONLY:-0} == 0; ++r)); do
  order=(old new)
  ((r % 2 == 0)) && order=(new old)
  for which in "${order[@]}"; do
    bin=$old; [[ $which == new ]] && bin=$new
    extra=()
    "$bin" bench --help | grep -q -- --no-onednn-rnn && extra+=(--no-onednn-rnn)
    "$bin" bench --help | grep -q -- --bidir-cells && extra+=(--bidir-cells '')
    [[ -n ${GEMM:-} ]] && extra+=(--gemm "$GEMM")
    "$bin" bench --no-torch --shapes "$shapes" --cells "$cells" --threads "${THREADS:-2}" \
      --repeats "${REPEATS:-1}" --warmup "${WARMUP:-1}" "${extra[@]}" --json "$out/$which-$r.json" \
      > "$out/$which-$r.txt" 2>&1
  done
  echo "round $r/$rounds done" >&2
done
python3 - "$out" "$rounds" <<'PY'
import json, os, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
# only the rounds that both binaries completed (a run cut short is summarized as far as it got)
rounds = max(r for r in range(rounds + 1)
             if all(os.path.exists(f"{out}/{w}-{q}.json") for w in ("old", "new") for q in range(1, r + 1)))
def rows(which, r):
    d = json.load(open(f"{out}/{which}-{r}.json"))
    items = d["results"] if isinstance(d, dict) and "results" in d else d
    return {(x["shape"], x["cell"], x.get("gemm", "")): x for x in items}
runs = {w: [rows(w, r) for r in range(1, rounds + 1)] for w in ("old", "new")}
print(f"{'shape':7} {'cell':8} {'gemm':8} {'mode':5} {'old ms':>9} {'new ms':>9} {'new/old':>8} {'old/old':>8}  verdict")
fails = 0
for key in runs["old"][0]:
    for mode in ("train", "infer"):
        f = f"rbn_{mode}_ms"
        o = [run[key][f] for run in runs["old"]]
        n = [run[key][f] for run in runs["new"]]
        mo, mn = statistics.median(o), statistics.median(n)
        spread = abs(statistics.median(o[0::2]) / statistics.median(o[1::2]) - 1) if len(o) > 1 else 0
        ok = mn / mo <= 1.03 + spread
        fails += not ok
        print(f"{key[0]:7} {key[1]:8} {key[2]:8} {mode:5} {mo:9.1f} {mn:9.1f} {mn / mo:8.3f} {1 + spread:8.3f}  {'ok' if ok else 'FAIL'}")
print(f"{rounds} rounds; medians; {'all rows ok' if not fails else f'{fails} rows FAIL'}")
PY
