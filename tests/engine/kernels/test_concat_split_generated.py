"""The concat and split layers' generated tactics against their references, in Triton's interpreter on a CPU."""

import pytest
import torch

from kiln.engine.ir.network import Layer
from kiln.engine.kernels.concat_split import concat_generated, split_generated
from kiln.engine.kernels.registry import RunContext, get_tactic

pytest.importorskip("triton")
RUN = RunContext({})
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def both(pieces: list[torch.Tensor], dim: int):
    layer = Layer("concat", "c", [f"p{i}" for i in range(len(pieces))], ["out"], {"dim": dim})
    pieces = [p.to(DEVICE) for p in pieces]
    return concat_generated(layer, pieces, RUN), get_tactic("concat", "reference").fn(layer, pieces, RUN)


@pytest.mark.parametrize("channels", [[24, 24], [3, 5, 1], [16, 8, 4, 2]], ids=["ghost", "odd", "four"])
def test_nhwc_channel_join_is_exact_and_stays_nhwc(channels):
    torch.manual_seed(0)
    pieces = [torch.randn(2, c, 5, 3).half().contiguous(memory_format=torch.channels_last) for c in channels]
    got, ref = both(pieces, 1)
    assert got.shape == (2, sum(channels), 5, 3) and got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got.cpu(), ref.cpu())


@pytest.mark.parametrize("dim", [0, 2, -1])
def test_other_dims_and_a_negative_dim(dim):
    torch.manual_seed(1)
    shapes = [[2, 3, 4], [2, 3, 4]]
    shapes[1][dim] = 5
    pieces = [torch.randn(*s) for s in shapes]
    got, ref = both(pieces, dim)
    assert torch.equal(got.cpu(), ref.cpu())


def test_integer_pieces_are_declined_for_the_reference():
    pieces = [torch.arange(6).reshape(2, 3), torch.arange(4).reshape(2, 2)]
    with pytest.raises(ValueError, match="float pieces"):
        both(pieces, 1)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dim,sizes", [(1, [3, 5]), (1, [2, 2, 4]), (3, [1, 2])])
def test_split_pieces_are_exact_and_keep_the_memory_format(channels_last, dim, sizes):
    torch.manual_seed(2)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 8, 4, 3).half().contiguous(memory_format=fmt).to(DEVICE)
    layer = Layer("split", "s", ["x"], [f"o{i}" for i in range(len(sizes))], {"dim": dim, "sizes": sizes})
    got = split_generated(layer, [x], RUN)
    ref = get_tactic("split", "reference").fn(layer, [x], RUN)
    assert len(got) == len(ref) == len(sizes)
    for g, r in zip(got, ref):
        assert g.shape == r.shape and torch.equal(g.cpu(), r.cpu())
        if channels_last and dim == 1:
            assert g.is_contiguous(memory_format=torch.channels_last)
        else:
            assert g.is_contiguous() or g.is_contiguous(memory_format=torch.channels_last)
