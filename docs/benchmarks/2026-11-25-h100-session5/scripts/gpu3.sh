#!/bin/bash
export PYTHONUNBUFFERED=1 PYTHONPATH=.
T=$OUT/tests.log
for t in tests/gpu/test_merge_parallel_convs_cuda.py tests/engine/kernels/test_triton_depthwise.py tests/engine/kernels/test_compile_in.py tests/quantize/test_fused_quantize.py; do
  echo "=== $t" >> $T
  timeout 60 python3 -m pytest -x -q -p no:cacheprovider $t > /tmp/t.log 2>&1; echo "rc=$?" >> $T
  grep -E "passed|failed|Error|FAILED|assert" /tmp/t.log | grep -v DEBUG | head -12 >> $T
done
timeout 440 python3 benchmarks/compare.py --models efficientnet_b0,resnet50,vit_base_patch16_224,convnext_tiny,swin_tiny_patch4_window7_224,poolformer_s12,repvgg_a2 --batches large --modes inductor-ro,kiln --profile --iters 30 --warmup 10 --no-plot --out $OUT/large > $OUT/large.log 2>&1
rm -f $OUT/large/results.json $OUT/large/kiln_profiles.json
