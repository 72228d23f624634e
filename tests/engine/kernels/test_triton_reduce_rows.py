"""A last-dim reduction broadcast back over its rows (F.normalize) as one fused_reduction layer, and its generated row
kernel (kernels/triton_reduce_rows.py) against the reference plan in Triton's interpreter."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kiln.engine.builder.build import build_plan
from kiln.engine.kernels.registry import BuildTarget, tactics_for
from kiln.engine.kernels.triton_reduce_rows import triton
from kiln.engine.plan import Step
from kiln.engine.runtime import PlanExecutor
from tests.helpers import network_as_cuda_build, relative_error

pytestmark = pytest.mark.skipif(triton is None or torch.cuda.is_available(), reason="needs Triton's interpreter (no GPU)")


class CrossCovariance(nn.Module):
    """EdgeNeXt's cross-covariance attention: q and k, permuted views of one linear's output with the tokens last,
    each normalised over the tokens. Channel 0 of q is all zeros, so its row's norm is clamped to eps (F.normalize's
    default 1e-12 is 0 in FP16, where the model itself makes 0 / 0: FP16 tests take one FP16 holds)."""

    def __init__(self, dim: int = 8, heads: int = 2, eps: float = 1e-12):
        super().__init__()
        self.heads, self.eps = heads, eps
        self.qkv = nn.Linear(dim, 3 * dim)
        with torch.no_grad():
            self.qkv.weight[0].zero_()
            self.qkv.bias[0].zero_()

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 4, 1)
        q, k, v = qkv.unbind(0)
        attn = F.normalize(q, dim=-1, eps=self.eps) @ F.normalize(k, dim=-1, eps=self.eps).transpose(-2, -1)
        return (attn @ v).permute(0, 3, 1, 2).reshape(b, n, c)


PRECISIONS = {"fp16": frozenset({torch.half}), "fp32": frozenset({torch.float32})}
EPS = {"fp16": 1e-6, "fp32": 1e-12}


def _normalizes(network) -> list:
    return [m for m in network.layers if m.kind == "fused_reduction" and m.attrs.get("broadcast")]


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_f_normalize_twice_becomes_two_layers_fewer_by_four_each(precision):
    model, inputs = CrossCovariance().eval(), [torch.randn(2, 7, 8)]
    without, _ = network_as_cuda_build(model, inputs, without=("fuse_reductions",), precisions=PRECISIONS[precision])
    network, _ = network_as_cuda_build(model, inputs, precisions=PRECISIONS[precision])
    fused = _normalizes(network)
    assert len(fused) == 2
    # (cast ->) norm -> clamp (with the FP16 cast back) -> expand -> divide: each one layer now.
    assert all({"reduce:norm", "binary:div"} <= set(m.attrs["fused_ops"]) for m in fused)
    members = len(fused[0].attrs["fused_ops"]) - 1  # the expand is no op of the program, but a layer before fusion
    assert len(network.layers) <= len(without.layers) - 2 * (members - 1), [m.kind for m in network.layers]
    assert not any(m.kind in ("reduce", "expand") for m in network.layers)


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_normalize_rows_of_a_permuted_view_match_the_reference_plan(precision):
    """The plan with both normalisations on the generated row kernel, and on triton_unfused, against the reference
    plan; a zero row exercises the eps clamp (0 / eps = 0 where an unclamped divide gives NaN)."""
    torch.manual_seed(0)
    model, inputs = CrossCovariance(eps=EPS[precision]).eval(), [torch.randn(2, 7, 8)]
    network, settings = network_as_cuda_build(model, inputs, precisions=PRECISIONS[precision])
    plan = build_plan(network, settings)
    assert len(_normalizes(network)) == 2
    values = [x.half() if precision == "fp16" else x for x in inputs]
    arena = torch.zeros(plan.arena.size, dtype=torch.uint8)
    (expected,) = PlanExecutor(plan).run(values, arena)
    assert torch.isfinite(expected).all()
    cuda = BuildTarget(torch.device("cuda"), torch.float16 if precision == "fp16" else torch.float32)
    for tactic in ("triton_reduce_rows", "triton_unfused"):
        steps = []
        for step in plan.steps:
            if step.layer.kind == "fused_reduction" and step.layer.attrs.get("broadcast"):
                assert tactic in [t.name for t in tactics_for(step.layer, cuda)]
                step = Step(step.layer, tactic)
            steps.append(step)
        plan.steps = steps
        (got,) = PlanExecutor(plan).run(values, torch.zeros(plan.arena.size, dtype=torch.uint8))
        assert torch.isfinite(got).all()
        assert relative_error(got.float(), expected.float()) < (4e-3 if precision == "fp16" else 1e-5), tactic
