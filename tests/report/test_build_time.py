"""The build-time breakdown: stages report to the clock of the compile running; the report shows seconds per stage."""

import itertools

import torch

import kiln
from kiln.report import build_time
from kiln.report.build_time import stage, timed_build
from kiln.report.partition_report import PartitionReport


class Result:
    def __init__(self):
        self.report = PartitionReport([])


def test_stages_add_up_and_an_inner_stage_counts_only_for_itself(monkeypatch):
    ticks = itertools.count()  # a fake clock: each reading is one second after the last
    monkeypatch.setattr(build_time, "_now", lambda: float(next(ticks)))

    @timed_build
    def build():
        with stage("capture"):  # 1 s
            pass
        for _ in range(2):  # a stage per engine block adds up
            with stage("timing"):  # 3 s each, 1 of them inside "precompile"
                with stage("precompile"):
                    pass
        return Result()

    seconds = build().report.build_seconds
    assert list(seconds) == ["capture", "precompile", "timing", "other", "total"]
    assert seconds["capture"] == 1 and seconds["precompile"] == 2 and seconds["timing"] == 4
    assert seconds["total"] == sum(v for k, v in seconds.items() if k != "total")


def test_nothing_is_recorded_outside_a_compile():
    with stage("capture"):
        pass
    assert build_time._CLOCK.get() is None


def test_a_compile_reports_its_stages():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 4)).eval()
    compiled = kiln.compile(model, inputs=[torch.randn(1, 3, 8, 8)], min_block_size=1)
    seconds = compiled.report.build_seconds
    for name in ("capture", "lowering", "partition", "convert", "optimize", "weights to device", "planning", "engine module"):
        assert name in seconds
    assert compiled.report.build_time().startswith("Build ") and "capture" in compiled.report.build_time()
    assert PartitionReport.from_json(compiled.report.to_json()).build_seconds == seconds
