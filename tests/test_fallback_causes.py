"""Models that used to crash or be refused where falling back to PyTorch (or capturing otherwise) works.

Each case comes from Torch-TensorRT's converter tests run through kiln.compile with fallback allowed.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.export import Dim

import kiln
from tests.helpers import Lambda, assert_outputs_match, check_against_eager

aten = torch.ops.aten
# The one-op Lambda modules are in training mode; kiln.compile's warning about it is expected.
pytestmark = pytest.mark.filterwarnings("ignore:kiln.compile. the module is in training mode")


class LinearBN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 4)
        self.bn = torch.nn.BatchNorm1d(4)

    def forward(self, x):
        return torch.relu(self.bn(self.fc(x)))


def _exported():
    torch.manual_seed(0)
    model = LinearBN().eval()
    program = torch.export.export(model, (torch.randn(4, 3),), dynamic_shapes=({0: Dim("batch", min=2, max=16)},))
    return model, program


def test_module_from_torch_export_compiles():
    # program.module() refuses .eval(); its mode was fixed at export.
    model, program = _exported()
    x = torch.randn(4, 3)
    compiled = kiln.compile(program.module(), [x], min_block_size=1)
    with torch.no_grad():
        assert_outputs_match(compiled(x), model(x))
    assert compiled.report.pytorch_ops == 0


def test_exported_program_compiles_with_its_own_input_ranges():
    model, program = _exported()
    compiled = kiln.compile(program, min_block_size=1)
    (spec,) = compiled.input_specs
    assert (spec.min_shape, spec.opt_shape, spec.max_shape) == ((2, 3), (4, 3), (16, 3))
    for batch in (2, 7, 16):
        x = torch.randn(batch, 3)
        with torch.no_grad():
            assert_outputs_match(compiled(x), model(x))


def test_exported_program_with_inputs_given_uses_them():
    model, program = _exported()
    x = torch.randn(5, 3)
    compiled = kiln.compile(program, [x], min_block_size=1)
    assert compiled.input_specs[0].opt_shape == (5, 3)
    with torch.no_grad():
        assert_outputs_match(compiled(x), model(x))


def test_exported_program_without_an_upper_bound_says_what_to_do():
    program = torch.export.export(LinearBN().eval(), (torch.randn(4, 3),), dynamic_shapes=({0: Dim("batch")},))
    with pytest.raises(kiln.KilnError, match="no upper bound"):
        kiln.compile(program)


class Constants(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("b", torch.randn(3))

    def forward(self):
        return torch.full((2, 3), 1.5) * self.b + torch.scalar_tensor(2.0)


def test_forward_without_inputs_compiles():
    model = Constants().eval()
    compiled = kiln.compile(model, min_block_size=1)
    assert_outputs_match(compiled(), model())
    assert compiled.report.pytorch_ops == 0


def test_nonzero_size_keeps_its_users_in_pytorch_instead_of_raising():
    model = Lambda(lambda x: ((torch.nonzero(x > 0) * 2 + 1).float().sum(0), torch.relu(x) * 3)).eval()
    x = torch.randn(6, 5)
    compiled = kiln.compile(model, [x], min_block_size=1)
    assert_outputs_match(compiled(x), model(x))
    reasons = {r.node: r.reason for r in compiled.report.rows}
    assert "data-dependent size" in reasons["mul_1"], compiled.report.table()
    assert compiled.report.engine_ops >= 2  # relu and the second mul


def test_nonzero_size_with_full_compilation_is_refused_with_the_reason():
    model = Lambda(lambda x: torch.nonzero(x > 0) * 2)
    with pytest.raises(kiln.UnsupportedOpError, match="data-dependent size"):
        kiln.compile(model, [torch.randn(6, 5)], require_full_compilation=True, torch_executed_ops=["aten.nonzero"])


RANGED = kiln.Input(min_shape=(1, 3, 4, 4), opt_shape=(1, 3, 8, 8), max_shape=(1, 3, 16, 16))

SIZE_ARGS = {
    "full": lambda x: aten.full.default([x.shape[2], 3], 2.0) + 1,
    "pad": lambda x: aten.constant_pad_nd.default(x, [1, x.shape[-1] // 2]) * 2,
    "upsample_size": lambda x: F.interpolate(x, size=(x.shape[2] * 2, x.shape[3]), mode="bilinear") + 1,
}


@pytest.mark.parametrize("name", sorted(SIZE_ARGS))
def test_size_made_in_pytorch_is_not_passed_into_a_block(name):
    # sym_size in torch_executed_ops: the size is made in PyTorch, so its users go there too.
    model = Lambda(SIZE_ARGS[name])
    compiled = kiln.compile(model, [RANGED], min_block_size=1, torch_executed_ops=["aten.sym_size.int"])
    for size in (4, 8, 13):
        x = torch.randn(1, 3, size, size)
        assert_outputs_match(compiled(x), model(x))


@pytest.mark.parametrize("name", sorted(SIZE_ARGS))
@pytest.mark.parametrize("min_block_size", [1, 5])
def test_size_arguments_compile_with_fallback(name, min_block_size):
    model = Lambda(SIZE_ARGS[name])
    compiled = kiln.compile(model, [RANGED], min_block_size=min_block_size)
    x = torch.randn(1, 3, 6, 6)
    assert_outputs_match(compiled(x), model(x))


def test_float_scale_from_a_size_that_export_fixes_is_a_capture_error_not_a_wrong_answer():
    model = Lambda(lambda x: F.interpolate(x, scale_factor=x.shape[2] / 4) - 1)
    with pytest.raises(kiln.CaptureError, match="right only at the example size"):
        kiln.compile(model, [RANGED], min_block_size=1)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_replication_pad_runs_on_the_engine(rank):
    pad = getattr(aten, f"replication_pad{rank}d").default
    x = torch.randn(*([2, 3] + [4] * rank))
    check_against_eager(Lambda(lambda x: pad(x, [1, 2] * rank)), x)


def test_ranges_from_one_with_an_index_input():
    # At size 1 the example indices must fit a 1-row table; the check runs on valid indices.
    model = Lambda(lambda i, w: F.embedding(i, w))
    specs = [
        kiln.Input(min_shape=(1, 1, 1, 1), opt_shape=(2, 3, 4, 5), max_shape=(2, 3, 10, 10), dtype=torch.int32),
        kiln.Input(min_shape=(1, 1), opt_shape=(2, 3), max_shape=(2, 3)),
    ]
    compiled = kiln.compile(model, specs, min_block_size=1)
    for ids_shape, table_shape in [((1, 1, 1, 1), (1, 1)), ((2, 3, 4, 5), (2, 3)), ((2, 1, 10, 3), (2, 2))]:
        ids, table = torch.randint(0, table_shape[0], ids_shape, dtype=torch.int32), torch.randn(table_shape)
        assert_outputs_match(compiled(ids, table), model(ids, table))


SMALL_RANGE_OPS = {
    "pad": lambda x: F.pad(x, (1, 1, 1, 1)),
    "max_pool": lambda x: F.max_pool2d(x, 1),
    "adaptive_pool": lambda x: F.adaptive_avg_pool2d(x, 1),
    "select": lambda x: x[:, 0],
    "slice": lambda x: x[:, :1],
    "upsample": lambda x: F.interpolate(x, scale_factor=2.0),
}


@pytest.mark.parametrize("name", sorted(SMALL_RANGE_OPS))
def test_ranges_from_one(name):
    model = Lambda(SMALL_RANGE_OPS[name])
    lo, opt, hi = (1, 1, 1, 1), (2, 3, 4, 4), (4, 3, 8, 8)
    compiled = kiln.compile(model, [kiln.Input(min_shape=lo, opt_shape=opt, max_shape=hi)], min_block_size=1)
    for shape in (lo, opt, hi):
        x = torch.randn(shape)
        assert_outputs_match(compiled(x), model(x))


def test_in_place_resize_of_an_input_is_a_clear_capture_error():
    with pytest.raises(kiln.CaptureError, match="shape or storage of an input in place"):
        kiln.compile(Lambda(lambda x: aten.resize_.default(x, [3, 2])), [torch.randn(2, 3)])


def test_in_place_resize_of_an_intermediate_runs_in_pytorch():
    model = Lambda(lambda x: aten.resize_.default(x * 2, [2, 2]) + 1)
    x = torch.randn(2, 3)
    compiled = kiln.compile(model, [x], min_block_size=1)
    assert_outputs_match(compiled(x), model(x))


def test_prims_broadcast_in_dim_is_captured():
    # Functionalization refuses the aliasing prim; capture rewrites it to unsqueeze + expand first.
    model = Lambda(lambda x: torch.ops.prims.broadcast_in_dim(x, [2, 3, 4], [0, 1]) + 1)
    check_against_eager(model, torch.randn(2, 3))
