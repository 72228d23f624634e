"""INT8 and FP8: calibration, quantized graphs from QAT/PT2E, placement and the accuracy guard.

docs/quantization.md describes the whole path. The modules:

- numerics.py    the arithmetic of quantized layers (the oracle for every kernel)
- qdq_graph.py   PT2E quantize/dequantize pairs → fake-quantize ops (a lowering pass)
- observers.py   per-tensor histograms of calibration activations
- algorithms.py  activation ranges from a histogram: min-max, entropy (KL), percentile, MSE
- calibrator.py  kiln.ptq's DataLoaderCalibrator / CacheCalibrator and the calibration loop
- cache.py       the calibration cache file: what it was computed for, refused when stale
- placement.py   which layers run in 8 bits (TensorRT's explicit-quantization rules) → new layers
- guard.py       the accuracy guard: keep the most harmful layers in FP16 within the error budget
- block.py       one engine block end to end (explicit or calibrated, cache, guard, report summary)
- reference_run.py  a Network run layer by layer on reference tactics (calibration, guard)

The layer kinds' references are in engine/kernels/quantized.py, the Triton kernels in
engine/kernels/triton_quantize*.py, the public names in kiln/ptq.py and kiln/debug.py.
"""
