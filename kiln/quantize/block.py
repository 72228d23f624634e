"""Quantize one engine block: explicit (QAT/PT2E scales in the graph) or calibrated (kiln.ptq), then guarded.

Called by the optimize pass (engine/optimize/quantize_placement.py) on the FP32 Network of a
block, after fusion and before precision assignment. What was decided, and the measured error,
is left in the block's `meta[SUMMARY]` for the report.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from kiln.engine.ir.network import Network
from kiln.errors import KilnError
from kiln.quantize.algorithms import activation_amax
from kiln.quantize.cache import CalibrationCacheError, graph_fingerprint, read_block, write_block
from kiln.quantize.calibrator import BlockInputs
from kiln.quantize.guard import AccuracyGuard
from kiln.quantize.observers import TensorHistogram
from kiln.quantize.placement import CANDIDATE_KINDS, QuantSpec, act_from_amax, activation_inputs, quantize_network, structural_reason
from kiln.quantize.reference_run import constants_on, run_network

CALIBRATION = "kiln_calibration"  # block.meta key: the BlockCalibration api.py attaches
SUMMARY = "kiln_quantization"  # block.meta key: what this module decided


@dataclass
class BlockCalibration:
    name: str
    inputs: BlockInputs | None  # None for a CacheCalibrator


def quantize_block(network: Network, block, settings) -> Network:
    qdtype = settings.quantized_dtype
    if qdtype is None:
        return network
    if any(layer.kind == "fake_quantize" for layer in network.layers):
        spec = QuantSpec("int8", {}, "the model's QAT/PT2E scales", explicit=True)
        block.meta[SUMMARY] = {"source": spec.source, "qdtype": "int8"}
        return quantize_network(network, spec, faster_in_float(network, settings), settings.compute_dtype)
    candidates = [layer for layer in network.layers if layer.kind in CANDIDATE_KINDS and structural_reason(layer, network) is None]
    if not candidates:
        return network
    calibrator = settings.calibrator
    if calibrator is None:
        raise KilnError(
            f"enabled_precisions includes {qdtype.upper()}, but there is no calibrator and the model has no quantize ops. "
            "Pass calibrator=kiln.ptq.DataLoaderCalibrator(loader) with representative inputs, or compile a QAT/PT2E-quantized model."
        )
    calibration: BlockCalibration = block.meta[CALIBRATION]
    wanted = {name for layer in candidates for name in activation_inputs(layer, network)}
    fingerprint = graph_fingerprint(block)
    entry = None
    if calibrator.cache_file and calibrator.use_cache:
        entry = read_block(calibrator.cache_file, calibration.name, fingerprint, calibrator.algorithm, qdtype)
        if entry is None and calibration.inputs is None:
            raise CalibrationCacheError(f"calibration cache {calibrator.cache_file} does not exist; make it with a DataLoaderCalibrator.")
    algorithm = entry["algorithm"] if entry is not None else calibrator.algorithm
    batches = calibration.inputs.of(calibration.name) if calibration.inputs is not None and entry is None else None
    if entry is None:
        amax = _calibrate(network, wanted, batches, algorithm, calibrator.options)
    else:
        amax = {name: t["amax"] for name, t in entry["tensors"].items()}
        if wanted - set(amax):
            raise CalibrationCacheError(f"calibration cache {calibrator.cache_file} lacks ranges for {sorted(wanted - set(amax))}.")
    spec = QuantSpec(qdtype, {name: act_from_amax(a, qdtype) for name, a in amax.items()}, f"{algorithm} calibration")
    budget = settings.int8_error_budget
    if entry is not None and (entry.get("error_budget") == budget or calibration.inputs is None):
        keep, error, error_all = dict(entry["keep"]), entry.get("error"), entry.get("error_all_quantized")
        spec = replace(spec, residuals_in_8_bits=entry.get("residuals_in_8_bits", True))
    else:
        if batches is None:
            batches = calibration.inputs.of(calibration.name)
        guard = AccuracyGuard(network, spec, batches[: max(calibrator.guard_batches, 1)], settings.compute_dtype)
        result = guard.run(budget)
        keep, error, error_all = result.keep, result.error, result.error_all_quantized
        spec = replace(spec, residuals_in_8_bits=result.residuals_in_8_bits)
    if calibrator.cache_file and (entry is None or entry.get("keep") != keep):
        readers = {name: sorted(layer.name for layer in candidates if name in activation_inputs(layer, network)) for name in amax}
        tensors = {name: {"amax": a, "layers": readers.get(name, [])} for name, a in amax.items()}
        record = {"fingerprint": fingerprint, "algorithm": algorithm, "qdtype": qdtype, "tensors": tensors, "keep": keep}
        record.update(error_budget=budget, error=error, error_all_quantized=error_all, residuals_in_8_bits=spec.residuals_in_8_bits)
        write_block(calibrator.cache_file, calibration.name, record)
    block.meta[SUMMARY] = {
        "source": spec.source + (" (from the cache)" if entry is not None else ""),
        "qdtype": qdtype,
        "error": error,
        "error_all_quantized": error_all,
        "budget": budget,
        "residuals": qdtype if spec.residuals_in_8_bits else "float (8-bit residuals alone broke the error budget)",
    }
    return quantize_network(network, spec, {**faster_in_float(network, settings), **keep}, settings.compute_dtype)


# An 8-bit tensor-core MMA takes 32 input channels a step: a convolution over fewer is mostly padding.
MIN_8BIT_CHANNELS = 16


def faster_in_float(network: Network, settings) -> dict[str, str]:
    """Layers that stay in float on a GPU because 8 bits would be slower there: convolutions over few channels.

    On the H100 resnet50's 3-channel stem took 1.78 ms in the Triton INT8 kernel and 0.35 ms in cuDNN
    FP16 (batch 128). Elsewhere (the CPU's reference tactics) there is no speed to lose, and all stay."""
    if settings.device.type != "cuda":
        return {}
    kept = {}
    for layer in network.layers:
        if layer.kind in ("conv", "conv_epilogue") and layer.attrs.get("groups", 1) == 1:
            channels = network.tensors[layer.inputs[0]].shape[1]
            if isinstance(channels, int) and channels < MIN_8BIT_CHANNELS:
                kept[layer.name] = f"{channels} input channels: too few for 8-bit tensor cores, FP16 is faster"
    return kept


def _calibrate(network: Network, wanted: set[str], batches, algorithm: str, options: dict) -> dict[str, float]:
    histograms = {name: TensorHistogram() for name in wanted}

    def observe(name: str, value: torch.Tensor) -> None:
        if name in histograms:
            histograms[name].update(value)

    device = batches[0][0].device if batches and batches[0] else torch.device("cpu")
    constants = constants_on(network, device)
    for batch in batches:
        run_network(network, batch, constants, observe)
    return {name: activation_amax(algorithm, h, options) for name, h in histograms.items()}


def attach_calibration(graph_module, block_names: list[str], captured, settings) -> None:
    """Give each engine block what its quantization needs: its name and (lazily) its calibration inputs."""
    if settings.quantized_dtype is None:
        return
    calibrator = settings.calibrator
    inputs = None
    if calibrator is not None and calibrator.batches() is not None:
        inputs = BlockInputs(graph_module, block_names, captured, calibrator, settings.device)
    for name in block_names:
        getattr(graph_module, name).meta[CALIBRATION] = BlockCalibration(name, inputs)


def record_quantization(report, name: str, plan, block) -> None:
    """The report's rows for a built block: which layers run in INT8/FP8/float and why."""
    from kiln.report.quantization import quantization_record

    record = quantization_record(plan.steps, block.meta.get(SUMMARY))
    if record is not None:
        report.quantization[name] = record
