"""Summed conv branches merged on a CUDA model (its constants live on the GPU), from one caller and from two threads
on their own streams, against eager. The CPU tests (tests/lowering/test_merge_parallel_convs.py) hold the cases."""

import pytest
import torch

import kiln
from tests.helpers import calls_on_streams, plan_steps, relative_error
from tests.lowering.test_merge_parallel_convs import RepBlock, RepMixer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
CUDA = torch.device("cuda")


BLOCKS = {"rep": lambda: RepBlock(16, 16), "rep-s2": lambda: RepBlock(16, 32, stride=2, identity=False), "mixer": lambda: RepMixer(16)}


@pytest.mark.parametrize("make", list(BLOCKS.values()), ids=list(BLOCKS))
def test_merged_block_on_cuda_matches_eager_from_two_streams(make):
    torch.manual_seed(0)
    model = make().to(CUDA).eval()
    x = torch.randn(4, 16, 20, 20, device=CUDA)
    compiled = kiln.compile(model, [x], enabled_precisions={torch.half}, min_block_size=1)
    convs = plan_steps(compiled, "conv", "conv_epilogue")
    assert len(convs) == 1, [s.layer.kind for s in plan_steps(compiled)]
    inputs = [[torch.randn(4, 16, 20, 20, device=CUDA) for _ in range(6)] for _ in range(2)]
    with torch.no_grad():
        refs = [[model(v) for v in per] for per in inputs]
    torch.cuda.synchronize()

    results = calls_on_streams(compiled, inputs)
    assert max(relative_error(o, r) for outs, rs in zip(results, refs) for o, r in zip(outs, rs)) < 2e-2
