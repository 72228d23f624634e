"""Calibrators: every algorithm, Torch-TensorRT's names, batch forms, the cache, errors."""

import json

import pytest
import torch
import torch.nn as nn

import kiln
from kiln.quantize.algorithms import activation_amax
from kiln.quantize.observers import TensorHistogram


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def _model():
    torch.manual_seed(0)
    return Small().eval()


def _batches(n=3):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(4, 3, 6, 6, generator=g) for _ in range(n)]


def _compile(model, calibrator, **kw):
    return kiln.compile(model, [torch.randn(4, 3, 6, 6)], enabled_precisions={torch.int8}, calibrator=calibrator, min_block_size=1, **kw)


def _rel(out, ref):
    return ((out - ref).norm() / ref.norm()).item()


def test_histogram_algorithms_on_a_heavy_tail():
    torch.manual_seed(0)
    h = TensorHistogram()
    x = torch.randn(200_000)
    x[-5:] = 50.0  # a few outliers, in the later batch
    h.update(x[:100_000])
    h.update(x[100_000:] * 2)  # a later batch widens the range
    assert activation_amax("minmax", h, {}) == pytest.approx(100.0)
    assert activation_amax("percentile", h, {"percentile": 99.99}) < 15
    assert 2 < activation_amax("entropy", h, {}) < 50
    # MSE: its threshold quantizes this data with no more squared error than min-max's.
    data = torch.cat([x[:100_000], x[100_000:] * 2])

    def quant_mse(amax):
        s = amax / 127
        return ((torch.clamp(torch.round(data / s), -127, 127) * s - data) ** 2).mean().item()

    assert quant_mse(activation_amax("mse", h, {})) <= quant_mse(100.0)
    assert h.counts.sum().item() == 200_000


@pytest.mark.parametrize(
    "kwargs",
    [
        {"algo": "minmax"},
        {"algo": "entropy"},
        {"algo": "percentile", "percentile": 99.9},
        {"algo": "mse"},
        {"algo_type": kiln.ptq.CalibrationAlgo.ENTROPY_CALIBRATION_2},
        {"algo_type": kiln.ptq.CalibrationAlgo.MINMAX_CALIBRATION},
        {"algo_type": kiln.ptq.CalibrationAlgo.LEGACY_CALIBRATION},
    ],
)
def test_every_calibrator_gives_an_int8_engine_close_to_fp32(kwargs):
    model = _model()
    compiled = _compile(model, kiln.ptq.DataLoaderCalibrator(_batches(), progress=False, **kwargs))
    kinds = [r[1] for r in compiled.report.layers["_engine_block_0"]]
    assert "qconv" in kinds and "qlinear" in kinds
    x = torch.randn(4, 3, 6, 6)
    with torch.no_grad():
        assert _rel(compiled(x), model(x)) < 0.05


def test_batches_may_be_tuples_with_labels_or_dicts():
    model = _model()
    plain = [b for b in _batches()]
    with_labels = [(b, torch.zeros(4)) for b in plain]
    as_dicts = [{"x": b} for b in plain]
    outs = []
    x = torch.randn(4, 3, 6, 6)
    for loader in (plain, with_labels, as_dicts):
        compiled = _compile(model, kiln.ptq.DataLoaderCalibrator(loader, algo="minmax", progress=False))
        outs.append(compiled(x))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_bad_batches_and_options_are_clear_errors():
    with pytest.raises(kiln.KilnError, match="unknown calibration algorithm"):
        kiln.ptq.DataLoaderCalibrator([], algo="kl-magic")
    with pytest.raises(kiln.KilnError, match="needs cache_file"):
        kiln.ptq.DataLoaderCalibrator([], use_cache=True)
    with pytest.raises(kiln.KilnError, match="lacks the model input"):
        _compile(_model(), kiln.ptq.DataLoaderCalibrator([{"image": torch.randn(4, 3, 6, 6)}], progress=False))
    with pytest.raises(kiln.KilnError, match="outside what the model was compiled for"):
        _compile(_model(), kiln.ptq.DataLoaderCalibrator([torch.randn(2, 3, 6, 6)], progress=False))
    with pytest.raises(kiln.KilnError, match="no batches"):
        _compile(_model(), kiln.ptq.DataLoaderCalibrator([], progress=False))


def test_int8_without_a_calibrator_says_what_to_do():
    with pytest.raises(kiln.KilnError, match="DataLoaderCalibrator"):
        kiln.compile(_model(), [torch.randn(4, 3, 6, 6)], enabled_precisions={torch.int8}, min_block_size=1)


class Unreadable:
    """A loader that must not be read: the cache is supposed to stand in for it."""

    def __iter__(self):
        raise AssertionError("the calibration data was read although a valid cache exists")


def test_cache_round_trip_and_cache_calibrator(tmp_path):
    path = str(tmp_path / "calib.json")
    model = _model()
    first = _compile(model, kiln.ptq.DataLoaderCalibrator(_batches(), algo="entropy", cache_file=path, progress=False))
    data = json.loads(open(path).read())
    entry = data["blocks"]["_engine_block_0"]
    assert entry["algorithm"] == "entropy" and entry["qdtype"] == "int8" and len(entry["fingerprint"]) == 64
    assert all(t["layers"] for t in entry["tensors"].values())  # which layers each range is for
    x = torch.randn(4, 3, 6, 6)
    reused = _compile(model, kiln.ptq.DataLoaderCalibrator(Unreadable(), algo="entropy", cache_file=path, use_cache=True))
    from_cache = _compile(model, kiln.ptq.CacheCalibrator(path))
    assert torch.equal(first(x), reused(x)) and torch.equal(first(x), from_cache(x))
    assert "from the cache" in from_cache.report.quantization["_engine_block_0"]["summary"]["source"]


def test_stale_or_foreign_cache_is_refused(tmp_path):
    path = str(tmp_path / "calib.json")
    _compile(_model(), kiln.ptq.DataLoaderCalibrator(_batches(), algo="minmax", cache_file=path, progress=False))
    retrained = _model()
    with torch.no_grad():
        retrained.conv.weight.mul_(1.5)
    with pytest.raises(kiln.ptq.CalibrationCacheError, match="different graph or different weights"):
        _compile(retrained, kiln.ptq.CacheCalibrator(path))
    with pytest.raises(kiln.ptq.CalibrationCacheError, match="'minmax' ranges, but 'entropy'"):
        _compile(_model(), kiln.ptq.DataLoaderCalibrator(Unreadable(), algo="entropy", cache_file=path, use_cache=True))
    with pytest.raises(kiln.ptq.CalibrationCacheError, match="made for int8"):
        kiln.compile(
            _model(),
            [torch.randn(4, 3, 6, 6)],
            enabled_precisions={torch.float8_e4m3fn},
            calibrator=kiln.ptq.CacheCalibrator(path),
            min_block_size=1,
        )
    with pytest.raises(kiln.ptq.CalibrationCacheError, match="does not exist"):
        _compile(_model(), kiln.ptq.CacheCalibrator(str(tmp_path / "missing.json")))
    (tmp_path / "junk.json").write_text("not json")
    with pytest.raises(kiln.ptq.CalibrationCacheError, match="cannot be read"):
        _compile(_model(), kiln.ptq.CacheCalibrator(str(tmp_path / "junk.json")))
