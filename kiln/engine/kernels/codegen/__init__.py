"""Generated Triton code: pointwise programs as data, rendered into kernels and epilogues.

A *pointwise program* (program.py) is a small list of element-wise ops over numbered values,
plain JSON: `{"ops": [{"kind": "binary", "op": "add", "args": [0, 1], "attrs": {}},
{"kind": "unary", "op": "silu", "args": [2], "attrs": {}}], "outputs": [3]}`, where values
0..n-1 are the program's inputs and op i makes value n + i. Each op names a layer kind and
its `op` attribute exactly as the engine IR does, so:
- the reference (`evaluate`) runs each op through that kind's reference tactic, which is by
  construction what the unfused layers computed;
- the Triton text (`emit`) comes from the op vocabulary: UNARY_TRITON beside UNARY_OPS in
  kernels/pointwise.py, BINARY_TRITON beside BINARY_OPS in kernels/elementwise.py, and
  `where`/`cast` here, `quantize` beside its reference in kernels/quantized.py (quantize_text, the
  one spelling of the 8-bit rounding that the 8-bit templates' requantize tail uses too). Adding an
  op to what every generated kernel can fuse is one entry there.

Where it is used:
- kernels/fused_pointwise.py: a whole kernel generated for a `fused_pointwise` layer (any
  connected group of element-wise layers, optimize/fuse_pointwise.py), inputs broadcast by
  stride arithmetic, NHWC or any dense output order.
- Epilogues of kernel templates (triton_gemm_1x1.py, triton_depthwise.py, and any new GEMM or
  conv template, INT8/FP8 ones included): the template keeps its core loop and leaves
  `{epilogue}` in its source; `emit(program, ["acc", "bias_tile", ...])` gives the lines that
  turn the FP32 accumulator (and whatever else the template loaded: a per-channel vector as a
  [1, BLOCK_N] tile, a residual tile, a dequantisation scale) into the output values, and
  `triton_source.load_kernel(source)` turns the finished text into a @triton.jit function.

Nothing generated ever comes from a .kiln file: plans store programs as data, and the source
is rendered again by this code on load.
"""

from kiln.engine.kernels.codegen.program import Program, emit, evaluate, is_generatable
from kiln.engine.kernels.codegen.triton_source import load_kernel

__all__ = ["Program", "emit", "evaluate", "is_generatable", "load_kernel"]
