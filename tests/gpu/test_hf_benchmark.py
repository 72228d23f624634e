"""The Hugging Face cases of benchmarks/compare.py on the GPU in FP16, at tiny sizes: one block each, eager's answers.

The same path the benchmark takes (compare.build_mode with the FP16 model and its inputs on CUDA),
called from two threads on two streams as --threads does; nothing is timed.
"""

import argparse
import threading

import pytest
import torch

pytest.importorskip("transformers")

from benchmarks import compare, hf_models  # noqa: E402
from tests.helpers import relative_error  # noqa: E402

FP16_RTOL = 3e-2


@pytest.mark.parametrize("name", sorted(hf_models.HF_CASES))
def test_hf_case_in_fp16_on_the_gpu_matches_eager_from_two_streams(name):
    model, xs = hf_models.build(hf_models.PREFIX + name, 2, "cuda", torch.half, tiny=True)
    x = xs if len(xs) > 1 else xs[0]
    args = argparse.Namespace(timing_cache=None)
    with torch.inference_mode():
        ref = model(*xs).float()
        call, info = compare.build_mode("kiln", name, model, x, args)
        assert relative_error(call().float(), ref) < FP16_RTOL
    assert "in 1 block(s); 0 run in PyTorch" in info["engine"], info["engine"]
    compiled, outs = info["_compiled"], {}

    def run(stream, key):
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(5):
                out = compiled(*xs)
            stream.synchronize()
            outs[key] = out.float()

    threads = [threading.Thread(target=run, args=(torch.cuda.Stream(), k)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outs) == 2 and all(relative_error(o, ref) < FP16_RTOL for o in outs.values())
