"""Two-tensor add/sub/mul/div writing into the activation arena (out=) when the runtime provides one.

Same kernels as the reference; the difference is where the result lives: in the planned arena
instead of a fresh allocation, so residual adds and squeeze-excite scales of a CUDA-graph plan
take no memory beyond the plan's arena.
"""

import torch

from kiln.engine.kernels.registry import tactic
from kiln.engine.runtime.executor import arena_output

OUT_OPS = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div}


def _two_tensor_op(layer, target) -> bool:
    return target.is_cuda and layer.attrs["op"] in OUT_OPS and layer.inputs[1] is not None and layer.attrs.get("alpha", 1) == 1


@tactic("binary", "aten_out", when=_two_tensor_op)
def binary_out(layer, inputs, run):
    a, b = inputs
    fn = OUT_OPS[layer.attrs["op"]]
    out = arena_output(run, 0)
    if out is None or tuple(out.shape) != tuple(torch.broadcast_shapes(a.shape, b.shape)) or out.dtype != torch.result_type(a, b):
        return fn(a, b)
    return fn(a, b, out=out)
