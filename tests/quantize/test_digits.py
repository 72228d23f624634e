"""End to end on real data: a CNN trained on scikit-learn's digits keeps its accuracy in INT8 (PTQ and QAT)."""

import pytest
import torch

import kiln
from tests.quantize.models import DigitsCNN, QATDigitsCNN, accuracy, train

sklearn_datasets = pytest.importorskip("sklearn.datasets")


@pytest.fixture(scope="module")
def digits():
    data = sklearn_datasets.load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=g)
    train_idx, test_idx = perm[:1400], perm[1400:]
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


@pytest.fixture(scope="module")
def fp32_model(digits):
    x, y, _, _ = digits
    torch.manual_seed(0)
    return train(DigitsCNN(), x, y, epochs=12)


@pytest.mark.parametrize("algo", ["minmax", "entropy", "percentile", "mse"])
def test_int8_ptq_keeps_top1_within_one_point(digits, fp32_model, algo):
    x, _, x_test, y_test = digits
    loader = [x[i : i + 100] for i in range(0, 400, 100)]
    calibrator = kiln.ptq.DataLoaderCalibrator(loader, algo=algo, progress=False)
    spec = kiln.Input(min_shape=(1, 1, 8, 8), opt_shape=(100, 1, 8, 8), max_shape=(512, 1, 8, 8))
    compiled = kiln.compile(fp32_model, [spec], enabled_precisions={torch.int8}, calibrator=calibrator, min_block_size=1)
    rows = compiled.report.quantization["_engine_block_0"]["rows"]
    assert sum(1 for r in rows if r[2] == "int8") >= 3, compiled.report.table()
    fp32 = accuracy(fp32_model, x_test, y_test)
    int8 = accuracy(compiled, x_test, y_test)
    assert fp32 > 90.0
    assert int8 >= fp32 - 1.0, f"{algo}: FP32 {fp32:.2f}% vs INT8 {int8:.2f}%"


def test_qat_model_compiles_to_int8_with_its_own_scales(digits, fp32_model):
    x, y, x_test, y_test = digits
    qat = QATDigitsCNN()
    qat.load_state_dict(fp32_model.state_dict(), strict=False)
    qat = train(qat, x, y, epochs=3, lr=1e-3)
    compiled = kiln.compile(qat, [x_test], enabled_precisions={torch.int8}, min_block_size=1)
    kinds = [row[1] for row in compiled.report.layers["_engine_block_0"]]
    assert kinds.count("qconv") == 3 and kinds.count("qlinear") == 1 and "fake_quantize" not in kinds, kinds
    assert compiled.report.quantization["_engine_block_0"]["summary"]["source"] == "the model's QAT/PT2E scales"
    # The INT8 engine computes what the fake-quantized model simulates; exact integer sums instead of FP32
    # ones move a few values across a rounding boundary of the next quantizer, by one step.
    with torch.no_grad():
        out, ref = compiled(x_test), qat(x_test)
    assert ((out - ref).norm() / ref.norm()).item() < 2e-3
    assert accuracy(compiled, x_test, y_test) >= accuracy(fp32_model, x_test, y_test) - 1.0
