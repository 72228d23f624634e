"""Calibrators (kiln.ptq's public classes) and the calibration loop that feeds them.

A calibrator says where activation ranges come from: a DataLoader run through the model
(optionally writing or reading a cache file), or a cache file alone. Batches may be tensors,
tuples/lists (the model's positional inputs first; anything after them, like labels, is
ignored) or dicts (by the model's argument names).

The loader is run once through the partitioned FP32 graph on the compile device, with a
progress bar, and each engine block's inputs are recorded: each block calibrates on what it
will actually receive. This happens lazily, only when some block has no usable cache.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

import torch
import torch.utils._pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from kiln.errors import KilnError
from kiln.quantize.algorithms import ALGORITHMS

CALIBRATION_INPUTS = "kiln_calibration_inputs"


class CalibrationAlgo(enum.Enum):
    """Torch-TensorRT's names (torch_tensorrt.ptq.CalibrationAlgo), plus Kiln's PERCENTILE and MSE."""

    ENTROPY_CALIBRATION = "entropy"
    ENTROPY_CALIBRATION_2 = "entropy"
    MINMAX_CALIBRATION = "minmax"
    # TensorRT's legacy calibrator clips at a quantile of the distribution.
    LEGACY_CALIBRATION = "percentile"
    PERCENTILE = "percentile"
    MSE = "mse"


def _algorithm_name(algo, algo_type) -> str:
    chosen = algo_type if algo_type is not None else algo
    name = chosen.value if isinstance(chosen, CalibrationAlgo) else str(chosen).lower()
    aliases = {"entropy_calibration_2": "entropy", "entropy_calibration": "entropy", "minmax_calibration": "minmax", "max": "minmax"}
    name = aliases.get(name, name)
    if name not in ALGORITHMS:
        raise KilnError(f"unknown calibration algorithm {chosen!r}; use one of {sorted(ALGORITHMS)} or a kiln.ptq.CalibrationAlgo.")
    return name


class Calibrator:
    """What every calibrator has: an algorithm, an optional cache file, and maybe data."""

    algorithm: str | None
    cache_file: str | None
    use_cache: bool
    options: dict

    def batches(self) -> Iterable | None:
        return None


class DataLoaderCalibrator(Calibrator):
    """Calibrate on the batches of `dataloader` (any iterable: a torch DataLoader, a list of tensors).

    algo / algo_type: "entropy" (default, TensorRT's entropy calibration 2), "minmax", "percentile"
    (at `percentile`, 99.99 by default) or "mse", or a CalibrationAlgo. With `cache_file`, the
    ranges are written there; with `use_cache=True` too, a cache made for this same graph is read
    instead of running the data (a cache made for another graph or algorithm is an error).
    max_batches: read at most this many batches. guard_batches: how many of them the accuracy
    guard measures the output error on (kiln.compile's int8_error_budget).
    """

    def __init__(
        self,
        dataloader: Iterable,
        algo="entropy",
        cache_file: str | None = None,
        use_cache: bool = False,
        *,
        algo_type=None,
        percentile: float = 99.99,
        max_batches: int | None = None,
        progress: bool = True,
        guard_batches: int = 2,
        device=None,  # accepted for Torch-TensorRT compatibility: calibration runs on the compile device
    ):
        self.dataloader = dataloader
        self.algorithm = _algorithm_name(algo, algo_type)
        self.cache_file = cache_file or None
        self.use_cache = bool(use_cache)
        if self.use_cache and self.cache_file is None:
            raise KilnError("DataLoaderCalibrator(use_cache=True) needs cache_file= to read from.")
        if not 0 < percentile <= 100:
            raise KilnError(f"percentile must be in (0, 100], got {percentile}.")
        self.options = {"percentile": float(percentile)}
        self.max_batches = max_batches
        self.progress = progress
        self.guard_batches = guard_batches

    def batches(self) -> Iterable:
        return self.dataloader

    def __repr__(self) -> str:
        return f"DataLoaderCalibrator(algo={self.algorithm!r}, cache_file={self.cache_file!r}, use_cache={self.use_cache})"


class CacheCalibrator(Calibrator):
    """Ranges from a calibration cache file alone (written by a DataLoaderCalibrator with cache_file=)."""

    def __init__(self, cache_file: str, algo=None, *, algo_type=None):
        self.cache_file = cache_file
        self.use_cache = True
        self.algorithm = None if algo is None and algo_type is None else _algorithm_name(algo, algo_type)
        self.options = {}
        self.guard_batches = 0

    def __repr__(self) -> str:
        return f"CacheCalibrator({self.cache_file!r})"


class BlockInputs:
    """Runs the calibration data through the partitioned graph once, on first request, recording each block's inputs."""

    def __init__(self, graph_module: torch.fx.GraphModule, block_names: list[str], captured, calibrator: DataLoaderCalibrator, device):
        self.graph_module = graph_module
        self.block_names = block_names
        self.captured = captured
        self.calibrator = calibrator
        self.device = device
        self._recorded: dict[str, list] | None = None

    def of(self, block: str) -> list[list[torch.Tensor]]:
        if self._recorded is None:
            self._recorded = self._record()
        return self._recorded.get(block, [])

    def _record(self) -> dict[str, list]:
        from tqdm.auto import tqdm

        recorded: dict[str, list] = {name: [] for name in self.block_names}
        hooks = []
        for name in self.block_names:
            module = getattr(self.graph_module, name)
            hooks.append(module.register_forward_pre_hook(lambda m, args, name=name: recorded[name].append([a for a in args])))
        calibrator = self.calibrator
        total = None
        try:
            total = len(calibrator.dataloader)
        except TypeError:
            pass
        if calibrator.max_batches is not None:
            total = min(total, calibrator.max_batches) if total is not None else calibrator.max_batches
        try:
            with torch.no_grad(), ViewsAsReshapes():
                bar = tqdm(calibrator.batches(), total=total, desc="kiln calibration", unit="batch", disable=not calibrator.progress)
                for i, batch in enumerate(bar):
                    if calibrator.max_batches is not None and i >= calibrator.max_batches:
                        break
                    self.graph_module(*flat_inputs(batch, self.captured, self.device))
        finally:
            for hook in hooks:
                hook.remove()
        if not any(recorded.values()):
            raise KilnError("the calibration DataLoader yielded no batches; give it at least one batch of representative inputs.")
        return recorded


class ViewsAsReshapes(TorchDispatchMode):
    """Lowering made every reshape an aten.view (the engine's layers copy as needed); run eagerly, a view of a
    non-contiguous tensor fails, so while the lowered graph runs for calibration each view is a reshape again."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.view.default:
            return torch.ops.aten.reshape.default(*args)
        return func(*args, **(kwargs or {}))


def flat_inputs(batch, captured, device) -> list[torch.Tensor]:
    """One calibration batch as the compiled graph's flat input list."""
    specs = captured.input_specs
    in_spec = captured.in_spec
    n_args = in_spec.child(0).num_children if in_spec.num_children == 2 else in_spec.num_children
    kw_names = list(in_spec.child(1).context) if in_spec.num_children == 2 else []
    if isinstance(batch, torch.Tensor):
        args, kwargs = (batch,), {}
    elif isinstance(batch, (tuple, list)):
        if len(batch) < n_args:
            raise KilnError(f"a calibration batch has {len(batch)} element(s) but the model takes {n_args} positional input(s).")
        args, kwargs = tuple(batch[:n_args]), {}
        if kw_names and len(batch) > n_args and isinstance(batch[n_args], dict):
            kwargs = {k: batch[n_args][k] for k in kw_names}
    elif isinstance(batch, dict):
        names = [s.name for s in specs[:n_args]]
        missing = [n for n in (*names, *kw_names) if n not in batch]
        if missing:
            raise KilnError(f"a calibration batch (a dict with keys {sorted(batch)}) lacks the model input(s) {missing}.")
        args, kwargs = tuple(batch[n] for n in names), {k: batch[k] for k in kw_names}
    else:
        raise KilnError(f"a calibration batch is a {type(batch).__name__}; yield tensors, tuples/lists or dicts of tensors.")
    flat, spec = pytree.tree_flatten((args, kwargs))
    if spec != in_spec:
        raise KilnError(f"a calibration batch is structured as {spec}, but the model was compiled for {in_spec}.")
    out = []
    for value, s in zip(flat, specs):
        if not isinstance(value, torch.Tensor):
            raise KilnError(f"calibration input {s.name!r} is a {type(value).__name__}, not a tensor.")
        if value.dim() != len(s.min_shape) or any(not lo <= d <= hi for d, lo, hi in zip(value.shape, s.min_shape, s.max_shape)):
            raise KilnError(
                f"calibration input {s.name!r} has shape {tuple(value.shape)}, outside what the model was compiled for "
                f"({s.describe()}). Calibrate with batches of that shape, or compile with a range, "
                "e.g. kiln.Input(min_shape=..., opt_shape=..., max_shape=...)."
            )
        value = value.to(device)
        if value.dtype != s.dtype and value.dtype.is_floating_point and s.dtype.is_floating_point:
            value = value.to(s.dtype)
        out.append(value)
    return out
