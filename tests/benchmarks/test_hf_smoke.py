"""The Hugging Face path of benchmarks/compare.py on the CPU, at tiny sizes: models build, compile and match eager.

Nothing is timed here (compare.py's timings come from the GPU only).
"""

import argparse

import pytest
import torch

pytest.importorskip("transformers")

from benchmarks import compare, hf_models  # noqa: E402
from tests.helpers import relative_error  # noqa: E402

# The engine may run layers in FP16 (compare.py's kiln mode enables it) against the FP32 eager model.
FP16_RTOL = 2e-2


def test_hf_flag_picks_the_hf_cases_and_their_modes():
    args = compare.parse_args(["--hf", "--threads"])
    assert args.models.split(",") == hf_models.default_names()
    assert args.modes == "eager,inductor-ro,kiln" and args.threads
    assert compare.parse_args(["--hf", "--modes", "kiln"]).modes == "kiln"
    assert compare.batches_for("hf:bert", "1,large") == [1, hf_models.LARGE_BATCH]
    assert compare.batches_for("resnet50", "1,large") == [1, 128]


def test_unknown_hf_name_says_which_exist():
    with pytest.raises(ValueError, match="hf:bert"):
        hf_models.build("hf:no-such-model", 1, tiny=True)


@pytest.mark.parametrize("name", sorted(hf_models.HF_CASES))
def test_hf_case_compiles_into_one_block_and_matches_eager(name):
    model, xs = hf_models.build(hf_models.PREFIX + name, 2, tiny=True)
    args = argparse.Namespace(timing_cache=None)
    x = xs if len(xs) > 1 else xs[0]  # as compare.run_case passes them
    with torch.inference_mode():
        eager, _ = compare.build_mode("eager", name, model, x, args)
        kiln_call, info = compare.build_mode("kiln", name, model, x, args)
        ref, out = eager(), kiln_call()
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert relative_error(out, ref) < FP16_RTOL
    assert "in 1 block(s); 0 run in PyTorch" in info["engine"], info["engine"]
    assert info["_compiled"].report.pytorch_ops == 0


def test_the_same_name_builds_the_same_weights_and_inputs():
    (a, xa), (b, xb) = hf_models.build("hf:gpt2", 1, tiny=True), hf_models.build("hf:gpt2", 1, tiny=True)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert all(torch.equal(p, q) for p, q in zip(xa, xb))
