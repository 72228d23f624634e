#!/bin/bash
export PYTHONUNBUFFERED=1 PYTHONPATH=.
T=$OUT/tests.log
nvidia-smi --query-gpu=name --format=csv,noheader > $T
for t in tests/gpu/test_triton_conv.py tests/gpu/test_dense_concat.py tests/gpu/test_fuse_attention.py tests/quantize/test_fused_quantize.py; do
  echo "=== $t" >> $T
  timeout 100 python3 -m pytest -x -q -p no:cacheprovider $t > /tmp/t.log 2>&1; echo "rc=$?" >> $T
  grep -E "passed|failed|Error|FAILED|assert" /tmp/t.log | grep -v DEBUG | head -20 >> $T
done
timeout 290 python3 benchmarks/compare.py --models cspresnet50,densenet121,ghostnet_100,repvgg_a2 --batches large --modes inductor-ro,kiln --profile --iters 30 --warmup 10 --no-plot --out $OUT/large > $OUT/large.log 2>&1
rm -f $OUT/large/results.json $OUT/large/kiln_profiles.json
ls $OUT/large >> $OUT/large.log
