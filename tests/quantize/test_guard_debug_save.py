"""The accuracy guard keeps harmful layers in float; kiln.debug.compare finds them; save/load keeps scales."""

import pytest
import torch
import torch.nn as nn

import kiln
from tests.helpers import plan_steps


class OneHarmfulLayer(nn.Module):
    """fc1's input has a huge channel it ignores (weight 0): per-tensor INT8 scales then erase the others."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(16, 16)
        self.fc2 = nn.Linear(16, 16)
        self.fc3 = nn.Linear(16, 4)
        with torch.no_grad():
            self.fc1.weight[:, 0] = 0

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _data(n=3):
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(n):
        x = torch.randn(8, 16, generator=g)
        x[:, 0] = 5000.0 * torch.randn(8, generator=g)
        batches.append(x)
    return batches


def _compile(model, budget, **kw):
    calibrator = kiln.ptq.DataLoaderCalibrator(_data(), algo="minmax", progress=False)
    return kiln.compile(
        model, [_data()[0]], enabled_precisions={torch.int8}, calibrator=calibrator, int8_error_budget=budget, min_block_size=1, **kw
    )


def _rel(out, ref):
    return ((out - ref).norm() / ref.norm()).item()


def test_guard_keeps_the_harmful_layer_in_float_and_says_why():
    model = OneHarmfulLayer().eval()
    x = _data(4)[3]
    loose = _compile(model, budget=10.0)
    guarded = _compile(model, budget=0.05)
    with torch.no_grad():
        ref = model(x)
        assert _rel(loose(x), ref) > 0.2  # every layer in INT8: fc1's signal is lost
        assert _rel(guarded(x), ref) < 0.05
    record = guarded.report.quantization["_engine_block_0"]
    rows = {r[0]: r for r in record["rows"]}
    assert rows["linear"][2].startswith("kept") and "raised the output error" in rows["linear"][4]
    assert rows["linear_1"][2] == "int8" and rows["linear_2"][2] == "int8"
    assert record["summary"]["error"] <= 0.05 < record["summary"]["error_all_quantized"]
    assert "output error vs FP32" in guarded.report.table()


def test_debug_compare_lists_layers_worst_first(capsys):
    model = OneHarmfulLayer().eval()
    loose = _compile(model, budget=10.0)
    rows = kiln.debug.compare(loose, model, [_data(4)[3]])
    errors = [r.error for r in rows]
    assert errors == sorted(errors, reverse=True)
    assert {r.layer for r in rows} >= {"linear", "linear_1", "linear_2"}
    # The error starts at fc1: its output is already far off, every later layer inherits it.
    first = next(r for r in rows if r.layer == "linear")
    assert first.error > 0.2 and first.precision == "int8"
    assert "rel. error vs FP32" in capsys.readouterr().out


@pytest.mark.parametrize("precision", [torch.int8, torch.float8_e4m3fn])
def test_save_and_load_keep_scales_and_precisions(tmp_path, precision):
    model = OneHarmfulLayer().eval()
    calibrator = kiln.ptq.DataLoaderCalibrator(_data(), algo="minmax", progress=False)
    compiled = kiln.compile(model, [_data()[0]], enabled_precisions={precision}, calibrator=calibrator, min_block_size=1)
    path = tmp_path / "model.kiln"
    kiln.save(compiled, path)
    loaded = kiln.load(path)
    x = _data(4)[3]
    assert torch.equal(loaded(x), compiled(x))
    assert loaded.report.quantization == compiled.report.quantization
    kinds = [row[1] for row in loaded.report.layers["_engine_block_0"]]
    assert "qlinear" in kinds


def test_fp8_needs_compute_capability_8_9_on_cuda(monkeypatch):
    from kiln.settings import CompileSettings

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    with pytest.raises(kiln.KilnError, match=r"compute capability 8.0; FP8 needs 8.9"):
        CompileSettings(enabled_precisions=frozenset({torch.float8_e4m3fn}), device=torch.device("cuda", 0))
    CompileSettings(enabled_precisions=frozenset({torch.float8_e4m3fn}))  # the CPU simulates FP8


def test_guard_of_a_half_model_measures_against_fp32():
    # The GPU benchmark's models are .half(): the guard once ran their FP16 weights on FP32 activations and failed.
    model = OneHarmfulLayer().eval().half()
    calibrator = kiln.ptq.DataLoaderCalibrator([x.half() for x in _data()], algo="minmax", progress=False)
    precisions = {torch.int8, torch.half}
    compiled = kiln.compile(
        model, [_data()[0].half()], enabled_precisions=precisions, calibrator=calibrator, int8_error_budget=0.05, min_block_size=1
    )
    record = compiled.report.quantization["_engine_block_0"]
    rows = {r[0]: r for r in record["rows"]}
    assert rows["linear"][2].startswith("kept") and rows["linear_1"][2] == "int8"
    x = _data(4)[3]
    with torch.no_grad():
        assert _rel(compiled(x.half()).float(), OneHarmfulLayer().eval()(x)) < 0.06


class ResidualBlock(nn.Module):
    """out = conv2(y) + y with a small conv2: an 8-bit residual adds y's quantization noise to the output unscaled."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        with torch.no_grad():
            self.conv2.weight.mul_(0.05)

    def forward(self, x):
        y = self.conv1(x)
        return self.conv2(y) + y


def test_guard_keeps_residuals_in_float_before_dropping_layers():
    g = torch.Generator().manual_seed(2)
    data = [torch.randn(2, 16, 6, 6, generator=g) for _ in range(3)]
    model = ResidualBlock().eval()

    def compile_with(budget):
        calibrator = kiln.ptq.DataLoaderCalibrator(data, algo="minmax", progress=False)
        settings = dict(enabled_precisions={torch.int8}, calibrator=calibrator, int8_error_budget=budget, min_block_size=1)
        compiled = kiln.compile(model, [data[0]], **settings)
        record = compiled.report.quantization["_engine_block_0"]
        return record["summary"], {r[0]: r[2] for r in record["rows"]}, compiled

    loose, rows, compiled = compile_with(10.0)
    assert loose["residuals"] == "int8" and set(rows.values()) == {"int8"}
    steps = [s.layer for s in plan_steps(compiled)]
    assert any("res_scale" in layer.attrs for layer in steps)  # conv1's output reaches the add in 8 bits
    # Just under what 8-bit residuals cost: float residuals fit the budget, so no layer has to leave INT8.
    tight, rows, compiled = compile_with(loose["error"] * 0.9)
    assert tight["residuals"].startswith("float") and set(rows.values()) == {"int8"}, (tight, rows)
    assert tight["error"] < loose["error"] * 0.9
    assert "residual adds read float" in compiled.report.table()
    steps = [s.layer for s in plan_steps(compiled)]
    assert not any("res_scale" in layer.attrs for layer in steps)
