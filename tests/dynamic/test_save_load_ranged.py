"""A ranged engine keeps its profile through kiln.save / kiln.load: same range, same symbols, same errors."""

import pytest
import torch

import kiln
from tests.dynamic.test_dynamic_shapes import Encoder, FlattenHead, encoder_inputs, encoder_specs
from tests.helpers import assert_outputs_match


def _save_load(compiled, tmp_path):
    path = tmp_path / "ranged.kiln"
    try:
        kiln.save(compiled, path)
    except NotImplementedError:
        pytest.skip("kiln.save is still a stub")
    return kiln.load(path)


def test_ranged_engine_round_trips(tmp_path):
    model = FlattenHead().eval()
    spec = kiln.Input(min_shape=(1, 3, 4), opt_shape=(8, 3, 4), max_shape=(32, 3, 4), name="x")
    compiled = kiln.compile(model, [spec], min_block_size=1, require_full_compilation=True)
    loaded = _save_load(compiled, tmp_path)
    assert loaded.input_specs[0].describe() == spec.describe()
    for before, after in zip(compiled.engine_blocks.values(), loaded.engine_blocks.values()):
        assert after.plan.symbols == before.plan.symbols
    for batch in (1, 8, 32, 5):
        x = torch.randn(batch, 3, 4)
        with torch.no_grad():
            assert_outputs_match(loaded(x), model(x))
    with pytest.raises(kiln.InputMismatchError, match=r"'x'.*dimension 0 is 33.*1\.\.32"):
        loaded(torch.randn(33, 3, 4))


def test_shared_symbols_survive_a_round_trip(tmp_path):
    model = Encoder().eval()
    compiled = kiln.compile(model, encoder_specs(), min_block_size=1, require_full_compilation=True)
    loaded = _save_load(compiled, tmp_path)
    assert [s.symbolic_shape for s in loaded.input_specs] == [s.symbolic_shape for s in compiled.input_specs]
    for b, s in ((1, 4), (4, 64), (2, 33)):
        args = encoder_inputs(b, s)
        with torch.no_grad():
            assert_outputs_match(loaded(*args), model(*args))
    with pytest.raises(kiln.InputMismatchError, match=r"'mask'.*equal to"):
        loaded(torch.randint(0, 50, (2, 8)), torch.rand(2, 9))
