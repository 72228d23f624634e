"""F.normalize (EdgeNeXt's cross-covariance attention) compiled on the GPU: each normalisation is one fused_reduction,
every tactic of it (the generated row kernel, triton_unfused, the reference) agrees with eager, and the build keeps one."""

import torch

import kiln
from kiln.engine.plan import Step
from kiln.engine.runtime import PlanExecutor
from tests.engine.kernels.test_triton_reduce_rows import CrossCovariance
from tests.helpers import plan_steps, relative_error

CUDA = torch.device("cuda")


def _normalizes(compiled) -> list:
    steps = plan_steps(compiled)
    return [s for s in steps if s.layer.kind == "fused_reduction" and s.layer.attrs.get("broadcast")]


def test_f_normalize_is_one_generated_kernel_and_matches_eager():
    torch.manual_seed(0)
    model = CrossCovariance(dim=96, heads=8, eps=1e-6).to(CUDA).eval()
    x = torch.randn(16, 784, 96, device=CUDA)
    compiled = kiln.compile(model, [x], enabled_precisions={torch.half}, min_block_size=1)
    steps = _normalizes(compiled)
    assert len(steps) == 2
    with torch.no_grad():
        ref = model(x)
        assert relative_error(compiled(x), ref) < 2e-2
    # Each tactic on its own, against the plan as built.
    (engine,) = compiled.engine_blocks.values()
    plan = engine.plan
    values = [x.to(plan.tensors[plan.inputs[0]].dtype)]
    arena = torch.zeros(plan.arena.size, dtype=torch.uint8, device=CUDA)
    (expected,) = PlanExecutor(plan).run(values, arena)
    for tactic in ("triton_reduce_rows", "triton_unfused", "reference"):
        plan.steps = [Step(s.layer, tactic) if s.layer.attrs.get("broadcast") else s for s in plan.steps]
        (got,) = PlanExecutor(plan).run(values, torch.zeros(plan.arena.size, dtype=torch.uint8, device=CUDA))
        assert relative_error(got.float(), expected.float()) < 4e-3, tactic
