"""kiln.refit: new weights in place, outputs equal to a fresh compile; bad state dicts refused by name."""

import pytest
import torch
from torch import nn

import kiln
from kiln.refit import RefitError, refit


class Net(nn.Module):
    def __init__(self, width: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(width)
        self.head = nn.Linear(width, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.bn2(self.conv2(h)) + h)
        h = self.head(h.mean(dim=(2, 3)))
        return self.out(torch.cumsum(h, dim=1))  # cumsum kept in PyTorch: `out` runs on its own block


def make(seed: int, width: int = 8) -> nn.Module:
    torch.manual_seed(seed)
    model = Net(width)
    for bn in (model.bn1, model.bn2):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


OPTIONS = dict(inputs=[kiln.Input(min_shape=(1, 3, 8, 8), opt_shape=(2, 3, 8, 8), max_shape=(4, 3, 8, 8))], min_block_size=1)
# With the linear layer kept in PyTorch too, the PyTorch part holds weights of its own that refit must replace.
TORCH_OPS = dict(torch_executed_ops=["aten.cumsum", "aten.linear"])
X = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def run(module):
    with torch.no_grad():
        return module(X)


@pytest.fixture(scope="module")
def fresh_outputs():
    """A fresh compile of make(1) with TORCH_OPS, run once: the answer a refit to make(1) must give (read only)."""
    return run(kiln.compile(make(1), **OPTIONS, **TORCH_OPS))


@pytest.fixture(scope="module")
def untouched():
    """One compile of make(0) shared by the tests whose refit is refused: each checks its own outputs are unchanged."""
    return kiln.compile(make(0), **OPTIONS, **TORCH_OPS)


@pytest.mark.parametrize("executed", [dict(torch_executed_ops=["aten.cumsum"]), TORCH_OPS])
def test_refit_from_model_equals_a_fresh_compile(executed):
    old, new = make(0), make(1)
    compiled = kiln.compile(old, **OPTIONS, **executed)
    before = run(compiled)
    assert refit(compiled, new) is compiled
    fresh = kiln.compile(make(1), **OPTIONS, **executed)
    assert torch.equal(run(compiled), run(fresh))
    assert not torch.allclose(run(compiled), before)
    torch.testing.assert_close(run(compiled), run(new), rtol=1e-4, atol=1e-5)


def test_refit_from_state_dict_and_the_models_are_left_alone(fresh_outputs):
    old, new = make(0), make(1)
    old_weights = {k: v.clone() for k, v in old.state_dict().items()}
    compiled = kiln.compile(old, **OPTIONS, **TORCH_OPS)
    refit(compiled, new.state_dict())
    assert torch.equal(run(compiled), fresh_outputs)
    # Refit never writes into a model's tensors: the compiled one's weights were copies.
    refit(compiled, make(2).state_dict())
    for k, v in old.state_dict().items():
        assert torch.equal(v, old_weights[k]), k
    torch.testing.assert_close(run(compiled), run(make(2)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "edit, names",
    [
        (lambda sd: sd.pop("conv2.weight"), ["missing", "conv2.weight"]),
        (lambda sd: sd.update({"conv3.weight": torch.zeros(1)}), ["unexpected", "conv3.weight"]),
        (lambda sd: sd.update({"head.weight": torch.zeros(5, 9)}), ["wrong shape", "head.weight", "(5, 9)", "(5, 8)"]),
        (lambda sd: sd.update({"head.bias": torch.zeros(5, dtype=torch.float64)}), ["head.bias", "float64"]),
    ],
)
def test_bad_state_dict_is_refused_by_name_and_nothing_changes(edit, names, untouched):
    compiled = untouched
    before = run(compiled)
    state_dict = dict(make(1).state_dict())
    edit(state_dict)
    with pytest.raises(RefitError) as info:
        refit(compiled, state_dict)
    for name in names:
        assert name in str(info.value)
    assert torch.equal(run(compiled), before)


def test_model_that_needs_another_engine_is_refused(untouched):
    compiled = untouched
    before = run(compiled)
    with pytest.raises(RefitError, match="compile"):
        refit(compiled, make(1, width=16))
    assert torch.equal(run(compiled), before)


def test_refit_a_loaded_file(tmp_path, fresh_outputs):
    path = tmp_path / "net.kiln"
    kiln.save(kiln.compile(make(0), **OPTIONS, **TORCH_OPS), path)
    loaded = kiln.load(path)
    with pytest.raises(RefitError, match="load_state_dict"):
        refit(loaded, make(1).state_dict())
    refit(loaded, make(1))
    assert torch.equal(run(loaded), fresh_outputs)
    # And it saves again with the new weights.
    kiln.save(loaded, path)
    assert torch.equal(run(kiln.load(path)), run(loaded))


def test_wrong_arguments(untouched):
    before = run(untouched)
    with pytest.raises(RefitError, match="CompiledModule"):
        refit(make(0), make(1))
    with pytest.raises(RefitError, match="state dict"):
        refit(untouched, [1, 2, 3])
    assert torch.equal(run(untouched), before)
