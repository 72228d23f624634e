#!/bin/bash
export PYTHONUNBUFFERED=1 PYTHONPATH=.
timeout 80 python3 benchmarks/compare.py --models poolformer_s12 --batches large --modes inductor-ro,kiln --iters 30 --warmup 10 --no-plot --out $OUT/large > $OUT/large.log 2>&1
rm -f $OUT/large/results.json
tail -5 $OUT/large.log
timeout 80 python3 benchmarks/compare.py --models bert_base --batches 32 --modes kiln,kiln-int8,kiln-fp8 --iters 30 --warmup 10 --no-plot --out $OUT/bert > $OUT/bert.log 2>&1
rm -f $OUT/bert/results.json
tail -4 $OUT/bert.log
timeout 80 python3 benchmarks/build_time.py --models mobilenetv3_large_100 --out $OUT/build > $OUT/build.log 2>&1; cat $OUT/build/build_times.md
timeout 30 python3 -m pytest -x -q -p no:cacheprovider tests/gpu/test_merge_parallel_convs_cuda.py > $OUT/merge_test.log 2>&1; tail -2 $OUT/merge_test.log
timeout 30 python3 -m pytest -x -q -p no:cacheprovider tests/quantize/test_fused_quantize.py tests/quantize/test_triton_quantized_compile.py > $OUT/q_test.log 2>&1; tail -2 $OUT/q_test.log
