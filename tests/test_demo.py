"""`python -m kiln demo` runs end to end and never prints CPU timings as speed."""

import torch

from kiln.demo import main


def test_demo_runs(capsys):
    assert main(["--batch", "1", "--size", "32", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "Kiln partition report" in out
    assert "max relative error" in out
    assert "loaded it back: outputs identical" in out
    assert "KiB" in out
    if not torch.cuda.is_available():
        assert "latency" not in out.lower().replace("latency is not shown", "")
        assert "only meaningful on a GPU" in out
