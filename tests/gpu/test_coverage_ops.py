"""The layers added for Torch-TensorRT parity, on the GPU: inside recorded CUDA graphs, replayed."""

import pytest
import torch
import torch.nn.functional as F

import kiln
from tests.engine.convert.test_indexing import CASES as INDEXING_CASES
from tests.engine.convert.test_more_layers import CASES as LAYER_CASES
from tests.helpers import Lambda, relative_error

CUDA = torch.device("cuda")


def _on_cuda(fn):
    # The test lambdas close over CPU constants; move every tensor they make or read to the GPU.
    def wrapped(*args):
        with torch.device(CUDA):
            return fn(*args)

    return wrapped


# Cases that read module-level CPU constants; grid_sample has its own GPU test below.
_CPU_CONSTANTS = {"native_layer_norm", "native_group_norm"} | {n for n in LAYER_CASES if n.startswith("grid_sample")}


@pytest.mark.parametrize("name", sorted(set(LAYER_CASES) - _CPU_CONSTANTS))
def test_layer_in_a_cuda_graph_matches_eager(name):
    torch.manual_seed(0)
    fn, shape, _ = LAYER_CASES[name]
    model = Lambda(_on_cuda(fn)).eval()
    x = torch.randn(shape, device=CUDA)
    compiled = kiln.compile(model, [x], min_block_size=1, require_full_compilation=True)
    ref = model(x)
    for _ in range(3):
        out = compiled(x)
    assert relative_error(out, ref) < 1e-4


@pytest.mark.parametrize("name", sorted(INDEXING_CASES))
def test_indexing_in_a_cuda_graph_matches_eager(name):
    fn, _ = INDEXING_CASES[name]
    model = Lambda(_on_cuda(fn)).eval()
    indices = ([0, 3, 4, 1], [5, 0, 2, 2], [6, 1, 0, 3])
    args = [torch.randn(5, 6, 7, device=CUDA), *(torch.tensor(i, device=CUDA) for i in indices)]
    compiled = kiln.compile(model, args, min_block_size=1, require_full_compilation=True)
    ref = model(*args)
    for _ in range(3):
        out = compiled(*args)
    for o, r in zip(out if isinstance(out, tuple) else [out], ref if isinstance(ref, tuple) else [ref]):
        assert relative_error(o, r) < 1e-4


@pytest.mark.parametrize("op", ["rand", "randn", "randint", "randperm"])
def test_random_ops_draw_anew_on_every_replay(op):
    make = {
        "rand": lambda x: torch.rand(64, 64, device=x.device) + x,
        "randn": lambda x: torch.randn(64, 64, device=x.device) + x,
        "randint": lambda x: torch.randint(0, 100, (64, 64), device=x.device) + x.long(),
        "randperm": lambda x: torch.randperm(64, device=x.device) + x[0].long(),
    }[op]
    x = torch.zeros(64, 64, device=CUDA)
    compiled = kiln.compile(Lambda(make).eval(), [x], min_block_size=1, require_full_compilation=True)
    draws = [compiled(x).clone() for _ in range(4)]
    assert all(not torch.equal(draws[i], draws[i + 1]) for i in range(3))


def test_grid_sample_fp16_within_tolerance():
    grid = torch.rand(2, 8, 8, 2, device=CUDA) * 2 - 1
    model = Lambda(lambda x, g: F.grid_sample(x, g, align_corners=False)).eval()
    x = torch.randn(2, 4, 16, 16, device=CUDA)
    compiled = kiln.compile(model, [x, grid], min_block_size=1, enabled_precisions={torch.half})
    assert relative_error(compiled(x, grid).float(), model(x, grid)) < 1e-2
