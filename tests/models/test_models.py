"""Whole models, end to end: FP32 within 1e-4 of eager, the same outputs after save/load, and the report.

A failure that names a missing converter (UnsupportedOpError listing the op) means that converter has
not landed yet, not that these tests are wrong.
"""

import pytest
import torch

import kiln
from tests.helpers import FP32_RTOL, assert_outputs_match, check_against_eager
from tests.models import zoo


@pytest.fixture(scope="module", params=sorted(zoo.PURE_MODELS))
def pure(request):
    model, args = zoo.PURE_MODELS[request.param]()
    # min_block_size=1 and require_full_compilation=True: every op must run on the engine.
    compiled = check_against_eager(model, *args, rtol=FP32_RTOL)
    return request.param, model, args, compiled


def test_pure_model_runs_entirely_on_the_engine(pure):
    name, _, _, compiled = pure
    report = compiled.report
    assert report.pytorch_ops == 0 and report.engine_ops > 0, report.table()
    assert len(compiled.engine_blocks) == 1, f"{name}: one block expected\n{report.table()}"


def test_pure_model_matches_eager_on_fresh_inputs(pure):
    _, model, args, compiled = pure
    fresh = tuple(torch.randn_like(a) for a in args)
    with torch.no_grad():
        assert_outputs_match(compiled(*fresh), model(*fresh))


def test_pure_model_save_load_round_trip(pure, tmp_path):
    name, _, args, compiled = pure
    path = tmp_path / f"{name}.kiln"
    kiln.save(compiled, path)
    loaded = kiln.load(path)
    with torch.no_grad():
        assert_outputs_match(loaded(*args), compiled(*args), rtol=0.0)
    assert loaded.report.to_json() == compiled.report.to_json()


def test_batch_norm_is_folded_away():
    model, args = zoo.resnetish()
    compiled = check_against_eager(model, *args)
    ops = {r.op for r in compiled.report.rows}
    assert not any("batch_norm" in op for op in ops), sorted(ops)


def test_vit_with_multihead_attention_exports():
    model, args = zoo.vit_mha()
    program = torch.export.export(model, args, strict=False)
    assert program is not None


# --- fallback: an unsupported op in the middle, dict outputs ---------------------------------------


@pytest.fixture(scope="module")
def fallback():
    model, args = zoo.cumprod_in_the_middle()
    compiled = kiln.compile(model, list(args), min_block_size=1)
    return model, args, compiled


def test_fallback_model_matches_eager(fallback):
    model, args, compiled = fallback
    with torch.no_grad():
        out = compiled(*args)
        assert_outputs_match(out, model(*args))
    assert set(out) == {"logits", "extras"} and set(out["extras"]) == {"probs", "hidden"}


def test_fallback_model_report(fallback):
    _, _, compiled = fallback
    report = compiled.report
    fallback_rows = report.fallback
    assert [(r.op, r.reason) for r in fallback_rows] == [("aten.cumprod.default", "unsupported op")], report.table()
    assert report.engine_ops > 0
    assert len(compiled.engine_blocks) == 2, "one engine block before the cumprod, one after"


def test_fallback_model_save_load_round_trip(fallback, tmp_path):
    _, args, compiled = fallback
    kiln.save(compiled, tmp_path / "fallback.kiln")
    loaded = kiln.load(tmp_path / "fallback.kiln")
    with torch.no_grad():
        assert_outputs_match(loaded(*args), compiled(*args), rtol=0.0)
    assert [r.op for r in loaded.report.fallback] == ["aten.cumprod.default"]


def test_fallback_model_refuses_full_compilation():
    model, args = zoo.cumprod_in_the_middle()
    with pytest.raises(kiln.UnsupportedOpError, match="aten.cumprod.default"):
        kiln.compile(model, list(args), require_full_compilation=True)
