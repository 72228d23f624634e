"""Layout-aware fusion on the GPU: views sunk below element-wise work (ConvNeXt's layer scale and residual in
the fc2 epilogue) and row moves composed into one gather (Swin's roll + window partition), against eager."""

import torch
from torch import nn

import kiln
from tests.gpu.models import ConvNeXtBlock, ShiftedWindowAttention
from tests.helpers import plan_steps, relative_error

CUDA = torch.device("cuda")


def _compile_and_check(model, x, tol=2e-2):
    model = model.to(CUDA).eval()
    compiled = kiln.compile(model, [x], enabled_precisions={torch.half}, min_block_size=1)
    with torch.no_grad():
        assert relative_error(compiled(x), model(x)) < tol
        other = torch.randn_like(x)
        assert relative_error(compiled(other), model(other)) < tol
    return plan_steps(compiled)


def test_convnext_layer_scale_and_residual_run_in_the_fc2_epilogue():
    torch.manual_seed(0)
    # Two blocks: the last one's tail also casts the network output to FP32, which a GEMM epilogue does not take.
    blocks = nn.Sequential(ConvNeXtBlock(timm_order=True), ConvNeXtBlock(timm_order=True))
    steps = _compile_and_check(blocks, torch.randn(4, 64, 14, 14, device=CUDA))
    epilogues = [s.layer.attrs["epilogue"] for s in steps if s.layer.kind == "linear" and s.layer.attrs.get("epilogue")]
    assert any([op["op"] for op in e["ops"]] == ["mul", "add"] for e in epilogues), epilogues


def test_swin_roll_and_window_moves_become_one_gather_each_way():
    torch.manual_seed(0)
    steps = _compile_and_check(ShiftedWindowAttention(), torch.randn(2, 8, 8, 64, device=CUDA))
    gathers = [s for s in steps if s.layer.kind == "index_select"]
    assert len(gathers) == 2 and all(s.layer.attrs["dim"] == 0 for s in gathers)
