"""compiled.memory() on the GPU: weights once, one arena and pool per execution context."""

import torch

import kiln
from tests.gpu.models import SmallCNN, init_bn

CUDA = torch.device("cuda")


def test_memory_report_after_calls_from_two_streams():
    torch.manual_seed(0)
    model = init_bn(SmallCNN()).to(CUDA).eval()
    x = torch.randn(4, 3, 32, 32, device=CUDA)
    compiled = kiln.compile(model, [x], enabled_precisions={torch.half}, min_block_size=1)
    with torch.no_grad():
        for _ in range(2):
            s = torch.cuda.Stream()
            with torch.cuda.stream(s):
                compiled(x)
            s.synchronize()
    report = compiled.memory()
    assert report.contexts == 2 and report.graphs == 2
    params = sum(p.numel() for p in model.parameters())
    assert 0 < report.weights <= 4 * params * 2  # FP16 weights, prepared copies at most a few per weight
    assert report.arena > 0 and report.graph_pools >= 0
    assert report.total >= report.weights + report.arena
