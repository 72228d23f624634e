"""Ranged kiln.Input: one engine serves every shape in the range, through every converter that sees symbols."""

import pytest
import torch
import torch.nn.functional as F

import kiln
from kiln.engine.convert.registry import registered_targets
from tests.helpers import assert_outputs_match

aten = torch.ops.aten


def compile_ranged(model, inputs, **kwargs):
    kwargs.setdefault("min_block_size", 1)
    kwargs.setdefault("require_full_compilation", True)
    return kiln.compile(model.eval(), inputs, **kwargs)


def check_sizes(model, compiled, make_inputs, sizes):
    for size in sizes:
        args = make_inputs(size)
        with torch.no_grad():
            assert_outputs_match(compiled(*args), model(*args))


def engine_plans(compiled):
    return [engine.plan for engine in compiled.engine_blocks.values()]


class FlattenHead(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(12, 5)

    def forward(self, x):
        y = torch.relu(x).view(x.shape[0], -1)
        z = self.fc(y).reshape(-1, 5, 1)
        return torch.sigmoid(z).flatten(1) + 1


def test_reshape_and_view_with_dynamic_batch():
    model = FlattenHead()
    compiled = compile_ranged(model, [kiln.Input(min_shape=(1, 3, 4), opt_shape=(8, 3, 4), max_shape=(32, 3, 4))])
    check_sizes(model, compiled, lambda b: [torch.randn(b, 3, 4)], [1, 2, 8, 13, 32])
    (plan,) = engine_plans(compiled)
    (symbol,) = plan.symbols.values()
    assert (symbol.min, symbol.opt, symbol.max) == (1, 8, 32)
    assert symbol.sources == [(0, 0)]


class Attention(torch.nn.Module):
    def __init__(self, dim=16, heads=2):
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)

    def forward(self, x):
        b, s, d = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v)
        return self.proj(a.transpose(1, 2).reshape(b, s, d))


def test_attention_with_dynamic_sequence_length():
    model = Attention()
    spec = kiln.Input(min_shape=(2, 1, 16), opt_shape=(2, 24, 16), max_shape=(2, 64, 16))
    if aten.scaled_dot_product_attention.default not in registered_targets():
        pytest.skip("no converter for aten.scaled_dot_product_attention yet (compute-ops converters in progress)")
    compiled = compile_ranged(model, [spec])
    check_sizes(model, compiled, lambda s: [torch.randn(2, s, 16)], [1, 5, 24, 64])


def test_attention_with_dynamic_sequence_length_and_fallback():
    """Whatever the engine takes today, a ranged attention model is right at every length."""
    model = Attention()
    spec = kiln.Input(min_shape=(2, 1, 16), opt_shape=(2, 24, 16), max_shape=(2, 64, 16))
    compiled = compile_ranged(model, [spec], require_full_compilation=False)
    check_sizes(model, compiled, lambda s: [torch.randn(2, s, 16)], [1, 5, 24, 64])
    assert compiled.report.engine_ops > 0


class PoolNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        y = F.max_pool2d(torch.relu(self.conv(x)), 3, 2, 1)
        y = F.avg_pool2d(y, 2)
        y = F.adaptive_avg_pool2d(y, 1).flatten(1)
        return self.fc(y)


def test_pooling_with_dynamic_height_and_width():
    model = PoolNet()
    spec = kiln.Input(min_shape=(1, 3, 8, 8), opt_shape=(2, 3, 32, 24), max_shape=(4, 3, 64, 64))
    compiled = compile_ranged(model, [spec])
    check_sizes(model, compiled, lambda s: [torch.randn(*s)], [(1, 3, 8, 8), (2, 3, 32, 24), (3, 3, 17, 41), (4, 3, 64, 64)])
    (plan,) = engine_plans(compiled)
    assert len(plan.symbols) == 3


class CatSplit(torch.nn.Module):
    def forward(self, x, y):
        z = torch.cat([x, torch.relu(y)], dim=1) * 2
        a, b = torch.split(z, [x.shape[1], y.shape[1]], dim=1)
        c, d = z.split(4, dim=2)
        return a - 1, b + 1, torch.cat([c, d], dim=0).sigmoid()


def test_cat_and_split_on_dynamic_dims():
    model = CatSplit()
    specs = [
        kiln.Input(min_shape=(2, 1, 8), opt_shape=(2, 6, 8), max_shape=(2, 16, 8)),
        kiln.Input(min_shape=(2, 2, 8), opt_shape=(2, 4, 8), max_shape=(2, 32, 8)),
    ]
    compiled = compile_ranged(model, specs)
    check_sizes(model, compiled, lambda s: [torch.randn(2, s[0], 8), torch.randn(2, s[1], 8)], [(1, 2), (6, 4), (16, 32), (3, 31)])


class Encoder(torch.nn.Module):
    """ids and mask share batch and sequence length: export gives them one symbol each."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(50, 16)
        self.fc = torch.nn.Linear(16, 16)

    def forward(self, ids, mask):
        h = self.embed(ids) * mask.unsqueeze(-1)
        return torch.tanh(self.fc(h)).sum(1) / mask.sum(1, keepdim=True)


def encoder_specs():
    return [
        kiln.Input(min_shape=(1, 4), opt_shape=(2, 16), max_shape=(4, 64), dtype=torch.int64, name="ids"),
        kiln.Input(min_shape=(1, 4), opt_shape=(2, 16), max_shape=(4, 64), name="mask"),
    ]


def encoder_inputs(b, s):
    return [torch.randint(0, 50, (b, s)), torch.rand(b, s) + 0.5]


def test_two_inputs_share_a_symbol():
    model = Encoder()
    compiled = compile_ranged(model, encoder_specs())
    ids, mask = compiled.input_specs
    assert ids.symbolic_shape == mask.symbolic_shape
    assert all(isinstance(d, str) for d in ids.symbolic_shape)
    check_sizes(model, compiled, lambda s: encoder_inputs(*s), [(1, 4), (2, 16), (4, 64), (3, 9)])
    with pytest.raises(kiln.InputMismatchError, match=r"'mask'.*dimension 1 is 9.*equal to 8.*'ids'.*dimension 1"):
        compiled(torch.randint(0, 50, (2, 8)), torch.rand(2, 9))


def test_unequal_ranges_for_one_symbol_intersect():
    model = Encoder()
    specs = encoder_specs()
    specs[1] = kiln.Input(min_shape=(1, 8), opt_shape=(2, 16), max_shape=(4, 32), name="mask")
    compiled = compile_ranged(model, specs)
    seq = next(s for p in engine_plans(compiled) for s in p.symbols.values() if s.max in (32, 64) and s.min in (4, 8))
    assert (seq.min, seq.max) == (8, 32)
    with pytest.raises(kiln.InputMismatchError, match=r"'mask'.*dimension 1 is 40.*8\.\.32"):
        compiled(*encoder_inputs(2, 40))


class Doubled(torch.nn.Module):
    """y's length is twice x's: export writes it as an expression of x's symbol."""

    def forward(self, x, y):
        return torch.cat([x, x], dim=1) * y


def test_related_dims_are_checked_at_call_time():
    model = Doubled()
    specs = [
        kiln.Input(min_shape=(2, 2), opt_shape=(2, 8), max_shape=(2, 32)),
        kiln.Input(min_shape=(2, 4), opt_shape=(2, 16), max_shape=(2, 64)),
    ]
    compiled = compile_ranged(model, specs)
    assert compiled.input_specs[1].symbolic_shape[1] == f"2*{compiled.input_specs[0].symbolic_shape[1]}"
    check_sizes(model, compiled, lambda s: [torch.randn(2, s), torch.randn(2, 2 * s)], [2, 7, 32])
    with pytest.raises(kiln.InputMismatchError, match=r"dimension 1 is 10.*to be 12"):
        compiled(torch.randn(2, 6), torch.randn(2, 10))


class MidGraph(torch.nn.Module):
    """Two engine blocks with a PyTorch op between them: the second reads its symbols from cumsum's output."""

    def forward(self, x):
        h = torch.relu(x) * 2 + 1
        h = torch.cumsum(h, dim=2)
        return torch.sigmoid(h).view(h.shape[0], -1) - 0.5


def test_symbols_of_a_block_in_the_middle_of_the_graph():
    model = MidGraph()
    spec = kiln.Input(min_shape=(1, 3, 2), opt_shape=(4, 3, 5), max_shape=(8, 3, 9))
    # cumsum runs on the engine now; kept in PyTorch here so that it splits the graph.
    compiled = compile_ranged(model, [spec], require_full_compilation=False, torch_executed_ops=["aten.cumsum"])
    check_sizes(model, compiled, lambda s: [torch.randn(s[0], 3, s[1])], [(1, 2), (4, 5), (8, 9), (3, 7)])
    plans = engine_plans(compiled)
    assert len(plans) == 2
    for plan in plans:
        assert {(s.min, s.opt, s.max) for s in plan.symbols.values()} == {(1, 4, 8), (2, 5, 9)}
        assert all(s.sources for s in plan.symbols.values())


def test_shapes_outside_the_range_rank_and_dtype_are_clear_errors():
    compiled = compile_ranged(FlattenHead(), [kiln.Input(min_shape=(2, 3, 4), opt_shape=(8, 3, 4), max_shape=(16, 3, 4), name="x")])
    with pytest.raises(kiln.InputMismatchError, match=r"'x'.*dimension 0 is 17.*range 2\.\.16"):
        compiled(torch.randn(17, 3, 4))
    with pytest.raises(kiln.InputMismatchError, match=r"'x'.*dimension 0 is 1.*range 2\.\.16"):
        compiled(torch.randn(1, 3, 4))
    with pytest.raises(kiln.InputMismatchError, match=r"'x'.*dimension 2 is 5.*range 4[;.]"):
        compiled(torch.randn(4, 3, 5))
    with pytest.raises(kiln.InputMismatchError, match=r"'x'.*rank 2"):
        compiled(torch.randn(4, 12))
    with pytest.raises(kiln.InputMismatchError, match=r"'x'.*dtype float16.*2\.\.16"):
        compiled(torch.randn(4, 3, 4).half())


class FixedBatch(torch.nn.Module):
    def forward(self, x):
        return x.view(8, -1) * 2


def test_a_range_the_model_fixes_to_one_size_is_an_error():
    with pytest.raises(kiln.CaptureError, match=r"dimension 0 .*range 1\.\.16.*only works with size 8"):
        compile_ranged(FixedBatch(), [kiln.Input(min_shape=(1, 4), opt_shape=(8, 4), max_shape=(16, 4))])


class SqueezesBatch(torch.nn.Module):
    """At batch 1 eager squeezes the batch away; the graph traced at batch >= 2 does not."""

    def forward(self, x):
        return torch.relu(x.squeeze(0)) + 1


class BranchesOnBatch(torch.nn.Module):
    def forward(self, x):
        return x * 0 if x.shape[0] == 1 else torch.relu(x) + 1


@pytest.mark.parametrize("model", [SqueezesBatch(), BranchesOnBatch()], ids=["squeeze", "branch"])
def test_size_one_the_model_treats_specially_gets_an_engine_of_its_own(model):
    from kiln.size_variants import SizeVariants

    compiled = compile_ranged(model, [kiln.Input(min_shape=(1, 4), opt_shape=(4, 4), max_shape=(16, 4))])
    assert isinstance(compiled, SizeVariants)
    assert [v.input_specs[0].describe() for v in compiled.variants] == ["(1, 4) float32", "(2..16, 4) float32"]
    check_sizes(model, compiled, lambda b: [torch.randn(b, 4)], [1, 2, 7, 16])
    with pytest.raises(kiln.InputMismatchError, match="outside the compiled range"):
        compiled(torch.randn(17, 4))


class SqueezesThreeDims(torch.nn.Module):
    def forward(self, x):
        return torch.relu(x.squeeze()) + 1


def test_too_many_small_sizes_treated_specially_is_refused_with_what_to_do():
    spec = kiln.Input(min_shape=(1, 1, 1), opt_shape=(2, 3, 4), max_shape=(4, 4, 8))
    with pytest.raises(kiln.CaptureError, match=r"from 2 up.*start the range at 2"):
        compile_ranged(SqueezesThreeDims(), [spec])


def test_opt_of_one_is_allowed():
    model = FlattenHead()
    compiled = compile_ranged(model, [kiln.Input(min_shape=(1, 3, 4), opt_shape=(1, 3, 4), max_shape=(4, 3, 4))])
    (plan,) = engine_plans(compiled)
    assert [(s.min, s.opt, s.max) for s in plan.symbols.values()] == [(1, 1, 4)]
    check_sizes(model, compiled, lambda b: [torch.randn(b, 3, 4)], [1, 4])


def test_report_shows_the_ranges():
    compiled = compile_ranged(Encoder(), encoder_specs())
    text = compiled.report.table()
    assert "ids: (1..4, 4..64) int64" in text
    assert "mask: (1..4, 4..64) float32" in text


class SumOfVarargs(torch.nn.Module):
    def forward(self, scale, *xs):
        return sum(torch.relu(x) for x in xs) * scale


def test_ranged_inputs_through_a_varargs_forward():
    model = SumOfVarargs()
    ranged = kiln.Input(min_shape=(1, 4), opt_shape=(2, 4), max_shape=(8, 4))
    compiled = compile_ranged(model, [kiln.Input((1,)), ranged, ranged])
    check_sizes(model, compiled, lambda b: [torch.randn(1), torch.randn(b, 4), torch.randn(b, 4)], [1, 5, 8])
