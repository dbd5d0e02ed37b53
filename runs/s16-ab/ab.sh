#!/bin/bash
# PTB lstm against oneDNN's LSTM, the binary before 3cdddf4 (BASE: a build of 8474ba3) and after
# (NEW), alternating, four rounds each (2026-12-03, 23:05-23:09 UTC, AVX-512 AMD EPYC):
#   BASE=../base/build/rbn NEW=build/rbn bash runs/s16-ab/ab.sh
for r in 1 2 3 4; do
  for b in base new; do
    if [ $b = base ]; then bin=$BASE; else bin=$NEW; fi
    echo "round $r $b $(date +%T)"
    $bin bench --shapes ptb --cells lstm --gemm onednn --threads 2 --repeats 5 --warmup 1 --no-torch \
      --bidir-cells '' --json runs/s16-ab/$b-$r.json > runs/s16-ab/$b-$r.txt 2>&1
    grep ^ptb runs/s16-ab/$b-$r.txt
  done
done
