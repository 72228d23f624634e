"""A tiny model file for the CLI, compiled once per session into a .kiln file the commands read."""

import textwrap

import pytest
import torch

MODEL_SOURCE = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.fc = nn.Linear(8, 5)

        def forward(self, x):
            h = torch.relu(self.bn(self.conv(x)))
            return self.fc(h.mean(dim=(2, 3))).softmax(-1)

    def make_model():
        torch.manual_seed(0)
        model = Tiny()
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 1.5)
        return model.eval()
    """
)


@pytest.fixture(scope="session")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "tiny.py"
    path.write_text(MODEL_SOURCE)
    return path


@pytest.fixture(scope="session")
def reference_model(model_file):
    from kiln.cli.model_source import load_model

    return load_model(f"{model_file}:make_model")


@pytest.fixture(scope="session")
def kiln_file(model_file, tmp_path_factory):
    from kiln.cli import main

    out = tmp_path_factory.mktemp("cli-out") / "tiny.kiln"
    assert main(["compile", f"{model_file}:make_model", "--input", "1-4x3x16x16", "--device", "cpu", "-o", str(out)]) == 0
    return out


def example(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(batch))
