"""On a real CUDA build: the report's kernels per forward fall with fusion, and the profile names each fused group."""

import torch

import kiln
from tests.gpu.models import SmallCNN, init_bn
from tests.helpers import assert_outputs_match

CUDA = torch.device("cuda")


def test_cuda_build_reports_fewer_kernels_and_profiles_fused_groups():
    torch.manual_seed(0)
    model = init_bn(SmallCNN()).to(CUDA).eval()
    x = torch.randn(2, 3, 32, 32, device=CUDA)
    compiled = kiln.compile(model, [x], min_block_size=1)
    with torch.no_grad():
        assert_outputs_match(compiled(x), model(x))
    before, after = compiled.report.kernels_per_forward()
    assert after < before, compiled.report.table()
    assert "kernels per forward" in compiled.report.table()
    prof = kiln.profile(compiled, x)
    fused = [r for r in prof.rows if r.kind == "conv_epilogue"]
    # Each names its conv and what came with it ("conv+silu", "mul+conv+add+relu" where the SE gate's multiply was taken too).
    assert fused and all("conv" in r.fused.split("+")[:2] and len(r.fused.split("+")) > 1 for r in fused), prof.table()
    assert "fused ops" in prof.table()
