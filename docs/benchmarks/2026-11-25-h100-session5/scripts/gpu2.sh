#!/bin/bash
export PYTHONUNBUFFERED=1 PYTHONPATH=.
T=$OUT/tests.log
for t in tests/engine/kernels/test_concat_split_generated.py tests/gpu/test_dense_concat.py tests/lowering/test_merge_parallel_convs.py; do
  echo "=== $t" >> $T
  timeout 100 python3 -m pytest -x -q -p no:cacheprovider $t > /tmp/t.log 2>&1; echo "rc=$?" >> $T
  grep -E "passed|failed|Error|FAILED|assert" /tmp/t.log | grep -v DEBUG | head -20 >> $T
done
timeout 60 python3 scratch/gn_fp8.py > $OUT/gn_fp8.log 2>&1
timeout 100 python3 scratch/dw_small.py > $OUT/dw_small.jsonl 2>&1
timeout 330 python3 benchmarks/compare.py --models ghostnet_100,cspresnet50,repvgg_a2,regnety_016,edgenext_small --batches large --modes inductor-ro,kiln --profile --iters 30 --warmup 10 --no-plot --out $OUT/large > $OUT/large.log 2>&1
rm -f $OUT/large/results.json $OUT/large/kiln_profiles.json
