"""compiled.memory(): what a compiled module holds, by kind."""

import torch
from torch import nn

import kiln


def test_cpu_module_counts_its_weights_once():
    torch.manual_seed(0)
    shared = nn.Linear(16, 16)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), shared, nn.ReLU(), nn.Linear(16, 4)).eval()
    compiled = kiln.compile(model, [torch.randn(2, 8)], min_block_size=1)
    report = compiled.memory()
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    # Weights are held once (a layer's bias may be stored apart or folded; never more than a copy each).
    assert 0 < report.weights <= params
    assert report.arena == 0 and report.graph_pools == 0 and report.contexts == 0
    assert report.total == report.weights
    text = report.table()
    assert "weights" in text and "total" in text
    assert report.to_json()["total"] == report.total
