"""The Triton row normalisation against the norm reference (Triton's interpreter on a CPU)."""

import pytest
import torch

from kiln.engine.ir.network import Layer
from kiln.engine.kernels import triton_norm
from kiln.engine.kernels.norm import norm_reference
from kiln.engine.kernels.registry import RunContext
from tests.helpers import relative_error

pytestmark = pytest.mark.skipif(triton_norm.triton is None, reason="Triton is not installed")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
RUN = RunContext({})


@pytest.mark.parametrize("kind", ["layer", "rms"])
@pytest.mark.parametrize("shape,normalized", [((3, 7, 96), [96]), ((2, 5, 50), [50]), ((4, 3, 6, 10), [6, 10]), ((9, 1000), [1000])])
def test_matches_the_reference(kind, shape, normalized):
    torch.manual_seed(len(shape) + normalized[-1])
    x = (torch.randn(shape, device=DEVICE) * 3 + 1).half()
    w = torch.rand(normalized, device=DEVICE).half() + 0.5
    b = torch.randn(normalized, device=DEVICE).half()
    attrs = {"type": kind, "shape": normalized, "eps": 1e-5 if kind == "layer" else None}
    layer = Layer("norm", "n", [], [], attrs)
    ref = norm_reference(layer, [x.float(), w.float(), b.float() if kind == "layer" else None, None, None], RUN)
    out = triton_norm.norm_rows_triton(layer, [x, w, b if kind == "layer" else None, None, None], RUN)
    assert out.shape == ref.shape and out.dtype == torch.float16
    assert relative_error(out.float(), ref) < 4e-3


def test_permuted_rows_and_no_affine():
    """ConvNeXt's case: LayerNorm over the channels of an NCHW tensor held channels-last, read as a permuted view."""
    torch.manual_seed(0)
    x = torch.randn(2, 24, 5, 6, device=DEVICE).contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
    layer = Layer("norm", "n", [], [], {"type": "layer", "shape": [24], "eps": 1e-6})
    ref = norm_reference(layer, [x, None, None, None, None], RUN)
    out = triton_norm.norm_rows_triton(layer, [x, None, None, None, None], RUN)
    assert relative_error(out, ref) < 1e-5
