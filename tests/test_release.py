"""A compiled module the user drops is freed, engines and weights included: nothing of Kiln's, nor of the
torch.export trace it was built from, keeps it alive (on a GPU that is its arenas and CUDA-graph pools)."""

import gc
import weakref

import torch

import kiln


def test_a_dropped_compiled_module_frees_its_engines_and_graph_modules():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()).eval()
    x = torch.randn(1, 3, 8, 8)
    compiled = kiln.compile(model, inputs=[x], min_block_size=1)
    compiled(x)
    engines = [weakref.ref(e) for e in compiled.engine_blocks.values()]
    weights = [weakref.ref(w) for e in compiled.engine_blocks.values() for w in e.plan.weights.values()]
    assert engines and weights
    del compiled
    gc.collect()
    assert [e() for e in engines] == [None] * len(engines)
    assert all(w() is None for w in weights)
