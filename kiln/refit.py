"""kiln.refit: new weights into a compiled module without building it again (Torch-TensorRT's refit_module_weights).

Lowering folds BatchNorm into conv weights, folds constant expressions and freezes every weight,
and a tactic's `prepare` reshapes weights once more (NHWC, transposed). So an engine constant is
a function of several parameters, and only the pipeline knows which. Refit therefore runs the
pipeline up to the engine's weights on the new model: capture, lowering, the same partition
(read from the module's report, so it also works on a loaded .kiln file), conversion and the
Network passes, then each step's chosen tactic's `prepare`. Tactic timing, the slow part of a
build, is skipped: every layer keeps the tactic it has. The result must be the same engine in
all but the constants' values (layer kinds, names, attributes, precisions, tensor shapes and
dtypes); otherwise the new weights would need another engine and refit refuses, saying what
differs.

A state dict needs the model's structure. kiln.compile keeps a weightless copy of it (parameters
on the meta device, so no memory); a loaded .kiln file has none, so it is refitted from a model.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import operator
from collections.abc import Mapping

import torch
import torch.utils._pytree as pytree
from torch.fx import GraphModule
from torch.fx.passes.utils.fuser_utils import fuse_by_partitions

from kiln.capture.export import capture
from kiln.engine.builder.build import PreparedWeights
from kiln.engine.convert import convert_graph
from kiln.engine.ir.network import Layer
from kiln.engine.kernels.registry import get_tactic
from kiln.engine.module import EngineModule
from kiln.engine.optimize import optimize_network
from kiln.errors import KilnError
from kiln.lowering import lower
from kiln.module import CompiledModule
from kiln.partition.blocks import BLOCK_PREFIX
from kiln.settings import CompileSettings

_STRUCTURE = "_kiln_refit_structure"
_SETTINGS = "_kiln_refit_settings"


class RefitError(KilnError):
    """The new weights cannot replace the compiled ones: wrong names or shapes, or they need another engine."""


def remember_structure(compiled: CompiledModule, module: torch.nn.Module, settings: CompileSettings) -> None:
    """Keep what refit needs of a state dict's model: its structure with weights on the meta device, and the settings."""
    object.__setattr__(compiled, _SETTINGS, settings)
    try:
        structure = _weightless_copy(module)
    except Exception:  # a module deepcopy cannot copy: refit then needs the model itself, and says so
        structure = None
    # Not a registered submodule: it must not appear in the compiled module's state_dict or .to().
    object.__setattr__(compiled, _STRUCTURE, structure)


def _weightless_copy(module: torch.nn.Module) -> torch.nn.Module:
    persistent = {id(t) for t in module.state_dict(keep_vars=True).values()}
    memo = {}
    for t in itertools.chain(module.parameters(), module.buffers()):
        if id(t) in persistent:
            meta = torch.empty_like(t, device="meta")
            memo[id(t)] = torch.nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, torch.nn.Parameter) else meta
    return copy.deepcopy(module, memo)


def refit(compiled: CompiledModule, new_weights: torch.nn.Module | Mapping[str, torch.Tensor]) -> CompiledModule:
    """Replace the weights of `compiled` by those of a model (same architecture) or of its state dict; returns `compiled`.

    The outputs then equal those of a fresh kiln.compile of the new weights with the same settings.
    """
    if not isinstance(compiled, CompiledModule):
        raise RefitError(f"kiln.refit expects the CompiledModule that kiln.compile or kiln.load returned, got {type(compiled).__name__}.")
    if isinstance(new_weights, torch.nn.Module):
        model = new_weights
        _check_device(model, compiled.device)
    elif isinstance(new_weights, Mapping):
        model = _model_from_state_dict(compiled, new_weights)
    else:
        raise RefitError(
            f"kiln.refit takes a torch.nn.Module or a state dict (a mapping of names to tensors), got {type(new_weights).__name__}."
        )
    settings = _settings(compiled)
    gm, captured = _lowered_and_partitioned(compiled, model, settings)
    engines = {name: _engine_weights(compiled, name, engine, gm, captured, settings) for name, engine in compiled.engine_blocks.items()}
    constants = _top_level_constants(compiled, gm)
    # Everything was checked before anything changes: a refused refit leaves the module as it was.
    for name, weights in engines.items():
        old = compiled.engine_blocks[name]
        plan = dataclasses.replace(old.plan, weights=weights)
        # A new EngineModule: its recorded CUDA graphs read the old weights' addresses, so they go too.
        setattr(compiled.graph_module, name, EngineModule(plan, name))
    for dotted, value in constants.items():
        owner, _, leaf = dotted.rpartition(".")
        (compiled.graph_module.get_submodule(owner) if owner else compiled.graph_module).register_buffer(leaf, value)
    return compiled


def _settings(compiled: CompiledModule) -> CompileSettings:
    stored = getattr(compiled, _SETTINGS, None)
    if stored is not None:
        return dataclasses.replace(stored, debug=False, dryrun=False)
    # A loaded file: what shapes the weights is the device and the compute precision, both in its plans.
    precisions = {torch.float32} | {engine.plan.compute_dtype for engine in compiled.engine_blocks.values()}
    return CompileSettings(enabled_precisions=frozenset(precisions), device=compiled.device)


def _check_device(model: torch.nn.Module, device: torch.device) -> None:
    for name, t in itertools.chain(model.named_parameters(), model.named_buffers()):
        if t.device.type != device.type:
            raise RefitError(
                f"the new model's {name!r} is on {t.device}, the compiled module on {device}; move the model with .to('{device}')."
            )


def _model_from_state_dict(compiled: CompiledModule, state_dict: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    structure = getattr(compiled, _STRUCTURE, None)
    if structure is None:
        raise RefitError(
            "this CompiledModule holds no copy of the model's structure (it was loaded from a .kiln file, or its model could not "
            "be copied), so a state dict alone cannot be mapped onto its weights. Load the state dict into the model and pass "
            "the model: model.load_state_dict(state_dict); kiln.refit(compiled, model)."
        )
    expected = structure.state_dict(keep_vars=True)
    missing = sorted(set(expected) - set(state_dict))
    extra = sorted(set(state_dict) - set(expected))
    wrong = []
    for name in sorted(set(expected) & set(state_dict)):
        want, got = expected[name], state_dict[name]
        if not isinstance(got, torch.Tensor):
            wrong.append(f"{name}: a {type(got).__name__}, not a tensor")
        elif tuple(got.shape) != tuple(want.shape) or got.dtype != want.dtype:
            wrong.append(f"{name}: {tuple(got.shape)} {got.dtype}, expected {tuple(want.shape)} {want.dtype}")
    if missing or extra or wrong:
        parts = [
            f"missing {missing}" if missing else "",
            f"unexpected {extra}" if extra else "",
            f"wrong shape or dtype: {wrong}" if wrong else "",
        ]
        raise RefitError("the state dict does not fit the compiled model: " + "; ".join(p for p in parts if p) + ".")
    model = copy.deepcopy(structure)
    model.load_state_dict({k: v.detach() for k, v in state_dict.items()}, assign=True)
    return model.to(compiled.device)


def _lowered_and_partitioned(compiled: CompiledModule, model: torch.nn.Module, settings: CompileSettings):
    specs = copy.deepcopy(compiled.input_specs)  # capture records names and symbols on them
    args, kwargs = pytree.tree_unflatten(specs, compiled.in_spec)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            captured = capture(model, list(args), dict(kwargs), settings)
    finally:
        if was_training:
            model.train()
    gm = lower(captured.graph_module)
    return _partition_as(gm, compiled), captured


def _partition_as(gm: GraphModule, compiled: CompiledModule) -> GraphModule:
    """The new graph cut into the blocks the compiled module has, node by node as its report says."""
    nodes = {n.name: n for n in gm.graph.nodes}
    groups: dict[str, dict] = {}
    for row in compiled.report.rows:
        if row.where != "engine":
            continue
        node = nodes.get(row.node)
        if node is None:
            raise RefitError(f"the new model's graph has no node {row.node!r} ({row.op}), which the compiled engine has; compile it anew.")
        groups.setdefault(row.block, {})[node] = None
    if set(groups) != set(compiled.engine_blocks):
        raise RefitError(f"the report names engine blocks {sorted(groups)}, the module has {sorted(compiled.engine_blocks)}; compile anew.")
    for group in groups.values():
        for node in list(group):
            for arg in node.all_input_nodes:
                if arg.op == "get_attr" and all(u in group for u in arg.users):
                    group[arg] = None
    # partition() numbers blocks in order and fuse_by_partitions names them by list position.
    ordered = [groups[name] for name in sorted(groups, key=lambda b: int(b[len(BLOCK_PREFIX) :]))]
    if ordered:
        gm = fuse_by_partitions(gm, ordered, prefix=BLOCK_PREFIX, always_return_tuple=True)
    return gm


def _same_layer(new: Layer, old: Layer) -> str | None:
    for field in ("kind", "name", "inputs", "outputs", "attrs", "precision"):
        if getattr(new, field) != getattr(old, field):
            return f"layer {old.name}: {field} {getattr(old, field)!r} would become {getattr(new, field)!r}"
    return None


def _engine_weights(compiled, name: str, engine: EngineModule, gm: GraphModule, captured, settings) -> dict[str, torch.Tensor]:
    plan = engine.plan
    network = optimize_network(convert_graph(getattr(gm, name), settings.truncate_double), getattr(gm, name), captured, settings)
    if len(network.layers) != len(plan.steps):
        raise RefitError(f"{name}: the new weights give {len(network.layers)} layers, the engine has {len(plan.steps)}; compile anew.")
    device = torch.device(plan.device)
    prepared = PreparedWeights({n: v.to(device) for n, v in network.constants.items()}, dict(network.tensors))
    for layer, step in zip(network.layers, plan.steps):
        difference = _same_layer(prepared.apply(layer, get_tactic(step.layer.kind, step.tactic)), step.layer)
        if difference is not None:
            raise RefitError(f"{name}: the new weights need another engine ({difference}); compile the model anew instead of refitting.")
    weights = {}
    for weight, old in plan.weights.items():
        value = prepared.values.get(weight)
        if value is None:
            raise RefitError(f"{name}: the new model gives no value for engine weight {weight!r}; compile anew.")
        _check_like(f"{name}: engine weight {weight!r}", value, old)
        # A copy: a weight the pipeline passed through unchanged is the new model's own tensor.
        weights[weight] = value.detach().clone()
    return weights


def _check_like(label: str, new: torch.Tensor, old: torch.Tensor) -> None:
    if new.shape != old.shape or new.dtype != old.dtype:
        raise RefitError(f"{label} would change from {tuple(old.shape)} {old.dtype} to {tuple(new.shape)} {new.dtype}; compile anew.")


def _top_level_constants(compiled: CompiledModule, gm: GraphModule) -> dict[str, torch.Tensor]:
    """The PyTorch part's own weights (get_attr nodes outside the engine blocks), checked against the compiled graph."""
    old_graph, new_graph = compiled.graph_module.graph, gm.graph
    old_ops = [(n.op, str(n.target)) for n in old_graph.nodes if n.op not in ("get_attr",) and n.target is not operator.getitem]
    new_ops = [(n.op, str(n.target)) for n in new_graph.nodes if n.op not in ("get_attr",) and n.target is not operator.getitem]
    if old_ops != new_ops:
        raise RefitError("the new model's PyTorch part differs from the compiled one's (other ops or order); compile it anew.")
    old_consts = [n.target for n in old_graph.nodes if n.op == "get_attr"]
    new_consts = [n.target for n in new_graph.nodes if n.op == "get_attr"]
    if len(old_consts) != len(new_consts):
        raise RefitError(f"the PyTorch part has {len(old_consts)} weights, the new model's {len(new_consts)}; compile it anew.")
    out = {}
    for old_name, new_name in zip(old_consts, new_consts):
        old, new = _attr(compiled.graph_module, old_name), _attr(gm, new_name)
        _check_like(f"PyTorch-part weight {old_name!r}", new, old)
        out[old_name] = new.detach().to(old.device).clone()
    return out


def _attr(module: torch.nn.Module, dotted: str) -> torch.Tensor:
    owner, _, leaf = dotted.rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, leaf)


__all__ = ["refit", "RefitError", "remember_structure"]
