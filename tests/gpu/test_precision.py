"""FP16/BF16 engines against the FP32 reference, and the FP32 accumulation the precision pass relies on.

Tolerances. Outputs are compared by max |out - ref| / max |ref| (tests/helpers.relative_error).
FP16 rounds each stored value to 11 significant bits (unit roundoff 2^-11 ~ 4.9e-4); with FP32
accumulation inside every GEMM, conv, norm and reduction, each layer adds about one rounding of
its output, and errors of independent roundings grow like the square root of the depth. The
test models are 5-15 layers deep, so ~1e-3..2e-3 is expected; 1e-2 leaves 5x headroom while
still failing on any FP16 accumulation (which errs by 1e-1 and more on these sizes, see the
accumulation tests below) or a wrong cast. BF16 keeps 8 bits (2^-8 ~ 3.9e-3): 8x looser, 5e-2.
"""

import pytest
import torch
import torch.nn.functional as F

import kiln
from tests.gpu.models import MLP, ExpSum, SmallCNN, TinyAttention, init_bn
from tests.helpers import relative_error

CUDA = torch.device("cuda")
TOLERANCE = {torch.half: 1e-2, torch.bfloat16: 5e-2}


def fp32_reference(model, x):
    # True FP32 (no TF32) so the reference is the exact function, not another approximation.
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            return model(x)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


MODELS = {
    "cnn": (lambda: init_bn(SmallCNN()), (4, 3, 64, 64)),
    "mlp": (lambda: MLP().eval(), (16, 64)),
    "attention": (lambda: TinyAttention().eval(), (2, 50, 64)),
}


@pytest.mark.parametrize("dtype", [torch.half, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", list(MODELS))
def test_low_precision_matches_fp32(name, dtype):
    torch.manual_seed(0)
    make, shape = MODELS[name]
    model = make().to(CUDA)
    x = torch.randn(shape, device=CUDA)
    compiled = kiln.compile(model, [x], enabled_precisions={dtype}, min_block_size=1)
    with torch.no_grad():
        out = compiled(x)
        out = compiled(x)
    ref = fp32_reference(model, x)
    assert out.dtype == torch.float32, "the user's FP32 output dtype is kept"
    err = relative_error(out, ref)
    assert err < TOLERANCE[dtype], f"{name} {dtype}: {err:.2e}"
    for engine in compiled.engine_blocks.values():
        assert engine.plan.compute_dtype == dtype
        assert any(w.dtype == dtype for w in engine.plan.weights.values())


def test_timm_efficientnet_fp16_matches_fp32():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("efficientnet_b0", pretrained=False).eval().to(CUDA)
    x = torch.randn(2, 3, 224, 224, device=CUDA)
    compiled = kiln.compile(model, [x], enabled_precisions={torch.half})
    with torch.no_grad():
        out = compiled(x)
    ref = fp32_reference(model, x)
    # ~80 layers deep: sqrt(80) ~ 9 roundings of 4.9e-4 in the worst direction, with headroom: 2e-2.
    assert relative_error(out, ref) < 2e-2


def test_overflowing_layers_kept_fp32_and_reported():
    model = ExpSum().to(CUDA).eval()
    x = torch.randn(8, 32, device=CUDA) * 0.1
    compiled = kiln.compile(model, [x], enabled_precisions={torch.half}, min_block_size=1)
    (engine,) = compiled.engine_blocks.values()
    kinds = {name.split("_")[0] for name in engine.plan.kept_fp32}
    assert {"unary", "reduce"} <= kinds, engine.plan.kept_fp32
    with torch.no_grad():
        out = compiled(x)
    assert torch.isfinite(out).all()
    assert relative_error(out, fp32_reference(model, x)) < 1e-2


# The precision pass leaves these in FP16 because PyTorch's CUDA kernels accumulate in FP32.
# Each input is built so that FP16 accumulation would be far off (a running FP16 sum of 0.01s
# stalls at 32; a softmax/norm over 16k values loses everything below 2^-11 of the total).
ACCUMULATING = {
    "sum": lambda x: x.sum(-1),
    "mean": lambda x: x.mean(-1),
    "softmax": lambda x: F.softmax(x, -1),
    "log_softmax": lambda x: F.log_softmax(x, -1),
    "layer_norm": lambda x: F.layer_norm(x, x.shape[-1:]),
    "group_norm": lambda x: F.group_norm(x.view(4, 16, -1), 4),
    "matmul": lambda x: x @ x.transpose(-1, -2),
}


@pytest.mark.parametrize("name", list(ACCUMULATING))
def test_cuda_half_kernels_accumulate_in_fp32(name):
    fn = ACCUMULATING[name]
    torch.manual_seed(0)
    x = (torch.rand(4, 16384, device=CUDA) * 0.02).to(torch.half)
    if name in ("layer_norm", "group_norm", "softmax", "log_softmax"):
        x = (x.float() * 100 + 3).half()
    got = fn(x).double()
    ref = fn(x.double())
    # The FP16 output itself rounds at 2^-11 of its magnitude (normalised outputs reach ~4 x their
    # typical size); FP16 accumulation would be off by 1e-1 or more here.
    assert relative_error(got, ref) < 5e-3, name
