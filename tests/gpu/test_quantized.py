"""INT8/FP8 on the GPU: every Triton 8-bit tactic against the exact reference, and compiled models
(resnet-style CNN, transformer encoder) in INT8/FP8 checked against FP32, also from many threads."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import kiln
import kiln.engine.kernels  # noqa: F401
from kiln.engine.ir.network import Layer
from kiln.engine.kernels.registry import REFERENCE, BuildTarget, RunContext, tactics_for
from kiln.quantize.numerics import per_channel_weight

CUDA = torch.device("cuda")
TARGET = BuildTarget(CUDA, torch.half)
RUN = RunContext({})
FP8_OK = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


def _q(qdtype, *shape, low=-128):
    if qdtype == "int8":
        return torch.randint(low, 128, shape, dtype=torch.int8, device=CUDA)
    return (torch.randn(*shape, device=CUDA) * 40).clamp(-448, 448).to(torch.float8_e4m3fn)


def _vec(n):
    return torch.randn(n, device=CUDA)


def _scales(n):
    return torch.rand(n, device=CUDA) * 1e-3 + 1e-4


def _attrs(qdtype, **extra):
    attrs = {"qdtype": qdtype, "x_scale": 0.02, "x_zero_point": 0, "activation": None, "activation_attrs": {}, "residual": False}
    attrs.update(out_dtype="float16", dtype="float16")
    attrs.update(extra)
    return attrs


CONV3 = {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1, "kernel_size": [3, 3]}
DW3 = {"stride": [2, 2], "padding": [1, 1], "dilation": [1, 1], "groups": 96, "kernel_size": [3, 3], "depthwise": True}
CONV1 = {"stride": [1, 1], "padding": [0, 0], "dilation": [1, 1], "groups": 1, "kernel_size": [1, 1]}


def _cases(qdtype):
    out_q = {"out_dtype": "int8", "dtype": "int8", "out_scale": 0.05, "out_zero_point": 0} if qdtype == "int8" else {}
    zp = {"x_zero_point": 7} if qdtype == "int8" else {}
    return {
        "linear_relu": (
            Layer("qlinear", "l", ["x", "w", "b", None, "s"], ["y"], _attrs(qdtype, activation="relu", **zp)),
            lambda: [_q(qdtype, 64, 200), _q(qdtype, 96, 200, low=-127), _vec(96), None, _scales(96)],
        ),
        "linear_gelu_residual_requant": (
            Layer("qlinear", "l", ["x", "w", "b", "r", "s"], ["y"], _attrs(qdtype, activation="gelu", residual=True, **out_q)),
            lambda: [
                _q(qdtype, 2, 77, 256), _q(qdtype, 128, 256, low=-127), torch.randn(128, device=CUDA),
                torch.randn(2, 77, 128, device=CUDA).half(), torch.rand(128, device=CUDA) * 1e-3,
            ],
        ),
        "attention_qk": (
            Layer("qmatmul", "m", ["a", "b", None, None, "s"], ["y"], _attrs(qdtype)),
            lambda: [_q(qdtype, 4, 12, 128, 64), _q(qdtype, 4, 12, 128, 64).transpose(-1, -2), None, None, _scales(1)],
        ),
        "conv3x3_add_relu": (
            Layer("qconv", "c", ["x", "w", "b", "r", "s"], ["y"], _attrs(qdtype, **CONV3, activation="relu", residual=True, **zp)),
            lambda: [
                _q(qdtype, 8, 64, 28, 28).contiguous(memory_format=torch.channels_last), _q(qdtype, 64, 64, 3, 3, low=-127),
                torch.randn(64, device=CUDA), torch.randn(8, 64, 28, 28, device=CUDA).half(), torch.rand(64, device=CUDA) * 1e-3,
            ],
        ),
        "conv3x3_stride2_requant": (
            Layer("qconv", "c", ["x", "w", "b", None, "s"], ["y"], _attrs(qdtype, **{**CONV3, "stride": [2, 2]}, **out_q)),
            lambda: [_q(qdtype, 8, 32, 29, 29), _q(qdtype, 48, 32, 3, 3, low=-127), _vec(48), None, _scales(48)],
        ),
        "depthwise3x3_s2_silu": (
            Layer("qconv", "c", ["x", "w", "b", None, "s"], ["y"], _attrs(qdtype, **DW3, activation="silu", **zp)),
            lambda: [_q(qdtype, 8, 96, 29, 29), _q(qdtype, 96, 1, 3, 3, low=-127), _vec(96), None, _scales(96)],
        ),
        "conv1x1_silu": (
            Layer("qconv", "c", ["x", "w", "b", None, "s"], ["y"], _attrs(qdtype, **CONV1, activation="silu")),
            lambda: [_q(qdtype, 8, 96, 14, 14), _q(qdtype, 160, 96, 1, 1, low=-127), _vec(160), None, _scales(160)],
        ),
    }  # fmt: skip


def _params():
    out = [("int8", name) for name in _cases("int8")]
    needs_fp8 = pytest.mark.skipif(not FP8_OK, reason="FP8 needs compute capability 8.9")
    out += [pytest.param("fp8", name, marks=needs_fp8) for name in _cases("fp8")]
    return out


@pytest.mark.parametrize("qdtype, case", _params())
def test_triton_8bit_tactics_match_the_reference(qdtype, case):
    torch.manual_seed(0)
    layer, make = _cases(qdtype)[case]
    inputs = make()
    ref = next(t for t in tactics_for(layer, TARGET) if t.name == REFERENCE).fn(layer, inputs, RUN)
    fast = [t for t in tactics_for(layer, TARGET) if t.name != REFERENCE]
    assert fast, f"no fast tactic for {case}"
    names = {n: v for n, v in zip(layer.inputs, inputs) if n is not None}
    for tactic in fast:
        prepared = tactic.prepare(layer, {"w": names["w"]}) if tactic.prepare else {}
        args = [prepared.get(n, v) if n is not None else None for n, v in zip(layer.inputs, inputs)]
        out = tactic.fn(layer, args, RUN)
        torch.cuda.synchronize()
        assert out.shape == ref.shape and out.dtype == ref.dtype, tactic.name
        if out.dtype == torch.int8:
            assert (out.int() - ref.int()).abs().max().item() <= 1, tactic.name
            assert (out != ref).float().mean().item() < 0.01, tactic.name
        else:
            err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
            assert err < (1e-3 if qdtype == "int8" else 1e-2), f"{tactic.name}: {err}"


def test_quantize_tactic_matches_reference():
    layer = Layer("quantize", "q", ["x"], ["y"], {"scale": 0.03, "zero_point": -2, "qmin": -128, "qmax": 127, "qdtype": "int8"})
    x = torch.randn(8, 64, 28, 28, device=CUDA).half().contiguous(memory_format=torch.channels_last)
    ref = next(t for t in tactics_for(layer, TARGET) if t.name == REFERENCE).fn(layer, [x], RUN)
    for tactic in [t for t in tactics_for(layer, TARGET) if t.name != REFERENCE]:
        assert torch.equal(tactic.fn(layer, [x], RUN), ref), tactic.name


class ResNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, 2, 1)
        self.c1 = nn.Conv2d(32, 32, 3, 1, 1)
        self.c2 = nn.Conv2d(32, 32, 3, 1, 1)
        self.down = nn.Conv2d(32, 64, 1, 2)
        self.c3 = nn.Conv2d(32, 64, 3, 2, 1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(self.c2(F.relu(self.c1(x))) + x)
        x = F.relu(self.c3(x) + self.down(x))
        return self.fc(x.mean((2, 3)))


def _calibrated(model, make, precision, **kw):
    loader = [make() for _ in range(4)]
    calibrator = kiln.ptq.DataLoaderCalibrator(loader, algo="entropy", progress=False)
    return kiln.compile(model, [make()], enabled_precisions={precision, torch.half}, calibrator=calibrator, min_block_size=1, **kw)


@pytest.mark.parametrize("precision", [torch.int8, pytest.param(torch.float8_e4m3fn, marks=pytest.mark.skipif(not FP8_OK, reason="FP8"))])
def test_compiled_cnn_in_8_bits_runs_triton_tactics_and_answers_every_thread(precision):
    torch.manual_seed(0)
    model = ResNetish().to(CUDA).eval()
    make = lambda: torch.randn(8, 3, 64, 64, device=CUDA)
    compiled = _calibrated(model, make, precision, debug=True)
    tactics = [row[2] for row in compiled.report.layers["_engine_block_0"]]
    kinds = [row[1] for row in compiled.report.layers["_engine_block_0"]]
    assert "qconv" in kinds and any(t.startswith("triton_") for t in tactics), compiled.report.table()
    inputs = [[make() for _ in range(10)] for _ in range(8)]
    with torch.no_grad():
        refs = [[model(x) for x in per_thread] for per_thread in inputs]
        single = [[compiled(x).clone() for x in per_thread] for per_thread in inputs]
    torch.cuda.synchronize()
    for outs, rs in zip(single, refs):
        for o, r in zip(outs, rs):
            assert ((o.float() - r).norm() / r.norm()).item() < 0.08

    def worker(i):
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream), torch.no_grad():
            outs = [compiled(x) for x in inputs[i]]
        stream.synchronize()
        return outs

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(worker, range(8)))
    torch.cuda.synchronize()
    for outs, expected in zip(results, single):
        for o, e in zip(outs, expected):
            assert torch.equal(o, e)  # the same answer as a lone call: no thread saw another's buffers


@pytest.mark.parametrize("precision", [torch.int8, pytest.param(torch.float8_e4m3fn, marks=pytest.mark.skipif(not FP8_OK, reason="FP8"))])
def test_transformer_encoder_in_8_bits(precision):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(256, 4, 1024, batch_first=True, dropout=0.0)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).to(CUDA).eval()
    make = lambda: torch.randn(8, 128, 256, device=CUDA)
    compiled = _calibrated(model, make, precision)
    kinds = [row[1] for rows in compiled.report.layers.values() for row in rows]
    assert kinds.count("qlinear") >= 4, kinds
    x = make()
    with torch.no_grad():
        err = ((compiled(x).float() - model(x)).norm() / model(x).norm()).item()
    assert err < 0.05


def test_fp8_is_refused_below_compute_capability_8_9():
    if FP8_OK:
        pytest.skip("this GPU has FP8")
    with pytest.raises(kiln.KilnError, match="FP8 needs 8.9"):
        kiln.compile(nn.Linear(4, 4).to(CUDA).eval(), [torch.randn(2, 4, device=CUDA)], enabled_precisions={torch.float8_e4m3fn})


def test_per_channel_weight_on_gpu_matches_cpu():
    w = torch.randn(64, 32, 3, 3)
    q_cpu, s_cpu = per_channel_weight(w, 0, "int8")
    q_gpu, s_gpu = per_channel_weight(w.to(CUDA), 0, "int8")
    assert torch.equal(q_cpu, q_gpu.cpu()) and s_cpu == s_gpu


@pytest.mark.parametrize("precision", [torch.int8, pytest.param(torch.float8_e4m3fn, marks=pytest.mark.skipif(not FP8_OK, reason="FP8"))])
def test_bert_encoder_layer_norms_write_8_bit_inputs(precision):
    """The benchmark's BERT encoder (small) in 8 bits: every LayerNorm feeding an 8-bit linear writes that linear's
    input itself (kernels/quantized.quantize_text in the norm's epilogue), so the only quantize layers left are the
    attention outputs' (one per encoder layer), and the answer stays close to eager FP16."""
    from benchmarks.models import Encoder, EncoderConfig

    cfg = EncoderConfig(vocab=1000, hidden=256, layers=2, heads=4, ffn=1024, max_positions=128)
    torch.manual_seed(0)
    model = Encoder(cfg).to(CUDA).eval().half()
    g = torch.Generator(device=CUDA).manual_seed(1)
    make = lambda: (torch.randint(0, cfg.vocab, (8, 128), device=CUDA, generator=g), torch.ones(8, 128, dtype=torch.long, device=CUDA))
    calibrator = kiln.ptq.DataLoaderCalibrator([make() for _ in range(4)], algo="entropy", progress=False)
    compiled = kiln.compile(model, list(make()), enabled_precisions={precision, torch.half}, calibrator=calibrator, min_block_size=1)
    kinds = [row[1] for rows in compiled.report.layers.values() for row in rows]
    assert kinds.count("qlinear") == 4 * cfg.layers and kinds.count("quantize") == cfg.layers, kinds
    for _ in range(3):
        ids, mask = make()
        with torch.no_grad():
            out, ref = compiled(ids, mask).float(), model(ids, mask).float()
        assert ((out - ref).norm() / ref.norm()).item() < 0.1
