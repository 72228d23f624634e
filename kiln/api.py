"""kiln.compile: build the CompileSettings, then run the pipeline stages in order."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from kiln.capture.export import CapturedGraph, capture
from kiln.capture.program import program_inputs, switch_to_eval, takes_inputs
from kiln.capture.release import forget_export_trace
from kiln.engine.builder import build_plan
from kiln.engine.convert import convert_graph
from kiln.engine.module import EngineModule
from kiln.engine.optimize import optimize_network
from kiln.errors import KilnError, SmallSizeError
from kiln.lowering import lower
from kiln.module import CompiledModule
from kiln.partition import partition
from kiln.quantize.block import attach_calibration, record_quantization
from kiln.report.build_time import stage, timed_build
from kiln.report.partition_report import PartitionReport
from kiln.report.sparsity import record_sparsity
from kiln.settings import CompileSettings, normalize_executed_ops
from kiln.size_variants import SizeVariants, size_variant_inputs


@timed_build
def compile(
    module: torch.nn.Module | torch.export.ExportedProgram,
    inputs: Sequence | None = None,
    *,
    arg_inputs: Sequence | None = None,
    kwarg_inputs: dict | None = None,
    enabled_precisions=frozenset({torch.float32}),
    min_block_size: int = 5,
    torch_executed_ops=(),
    require_full_compilation: bool = False,
    truncate_double: bool = True,
    device: torch.device | str | None = None,
    debug: bool = False,
    dryrun: bool = False,
    **options,
) -> CompiledModule | PartitionReport:
    """Compile `module` for the given inputs. Returns a CompiledModule, or the PartitionReport if dryrun."""
    if inputs is not None and arg_inputs is not None:
        raise KilnError("pass either inputs= or arg_inputs= (they mean the same), not both.")
    if isinstance(module, torch.export.ExportedProgram):
        # As torch_tensorrt.dynamo.compile does: the program's own input shapes and ranges, unless given.
        if inputs is None and arg_inputs is None and kwarg_inputs is None:
            arg_inputs, kwarg_inputs = program_inputs(module)
        module = module.module()
    if not isinstance(module, torch.nn.Module):
        raise KilnError(f"kiln.compile expects a torch.nn.Module or a torch.export.ExportedProgram, got {type(module).__name__}.")
    arg_inputs = list(inputs if inputs is not None else arg_inputs or [])
    kwarg_inputs = dict(kwarg_inputs or {})
    if not arg_inputs and not kwarg_inputs and takes_inputs(module):
        raise KilnError("kiln.compile needs inputs=[kiln.Input(shape), ...] or example tensors to know the input shapes.")
    settings = make_settings(
        module,
        arg_inputs,
        kwarg_inputs,
        enabled_precisions=enabled_precisions,
        min_block_size=min_block_size,
        torch_executed_ops=torch_executed_ops,
        require_full_compilation=require_full_compilation,
        truncate_double=truncate_double,
        device=device,
        debug=debug,
        dryrun=dryrun,
        **options,
    )
    was_training = module.training and switch_to_eval(module)
    if was_training:
        warnings.warn("kiln.compile: the module is in training mode; compiling it in eval mode (as for inference).", stacklevel=2)
    module_key = None
    try:
        if settings.engine_cache and not settings.dryrun:
            from kiln.engine_cache import load_by_module  # a warm compile: keyed from the module itself, no capture

            module_key, cached = load_by_module(module, arg_inputs, kwarg_inputs, settings)
            if cached is not None:
                from kiln.refit import remember_structure

                remember_structure(cached, module, settings)
                return cached
        try:
            with torch.no_grad(), stage("capture"):
                captured = capture(module, arg_inputs, kwarg_inputs, settings)
        finally:
            forget_export_trace()
    except SmallSizeError as exc:
        # The model treats a size below 2 specially: one engine per small size, one for the rest.
        variants = size_variant_inputs(exc, arg_inputs, kwarg_inputs)
        if variants is None:
            raise
        settings_kwargs = dict(
            enabled_precisions=enabled_precisions, min_block_size=min_block_size, torch_executed_ops=torch_executed_ops,
            require_full_compilation=require_full_compilation, truncate_double=truncate_double, device=device, debug=debug,
            dryrun=dryrun, **options,
        )  # fmt: skip
        compiled = [compile(module, args, kwarg_inputs=kwargs, **settings_kwargs) for args, kwargs in variants]
        return compiled[-1] if dryrun else SizeVariants(compiled)
    finally:
        if was_training:
            module.train()
    compiled = compile_captured(captured, settings, module_key=module_key)
    if isinstance(compiled, CompiledModule):
        from kiln.refit import remember_structure  # kiln.refit(compiled, state_dict) maps names through it

        remember_structure(compiled, module, settings)
    return compiled


@timed_build
def compile_captured(
    captured: CapturedGraph, settings: CompileSettings, module_key: str | None = None
) -> CompiledModule | PartitionReport:
    """The stages after capture; torch.compile's backend enters here with dynamo's graph.

    `module_key`: the engine cache's key of the module this graph was captured from (kiln/engine_cache.py)."""
    if settings.engine_cache and not settings.dryrun:
        from kiln.engine_cache import compile_with_cache  # loads the engine built before, or builds and stores it

        return compile_with_cache(captured, settings, module_key)
    with stage("lowering"):
        gm = lower(captured.graph_module)
    with stage("partition"):
        parts = partition(gm, settings)
    report = PartitionReport(parts.rows, inputs=[f"{s.name}: {s.describe()}" for s in captured.input_specs])
    for name in parts.block_names:
        report.blocks[name] = sum(1 for r in parts.rows if r.block == name)
    if settings.dryrun:
        if settings.debug:
            print(report.table())
        return report
    gm = parts.graph_module
    with stage("calibration"):
        attach_calibration(gm, parts.block_names, captured, settings)
    for name in parts.block_names:
        block = getattr(gm, name)
        with stage("convert"):
            network = convert_graph(block, settings.truncate_double)
        with stage("optimize"):
            network = optimize_network(network, block, captured, settings)
        plan = build_plan(network, settings)  # its stages: weights to device, precompile, timing, planning
        with stage("engine module"):
            engine = EngineModule(plan, name)
        setattr(gm, name, engine)
        report.layers[name] = [(s.layer.name, s.layer.kind, s.tactic, s.layer.source, s.timings.get(s.tactic)) for s in plan.steps]
        report.record_kernels(name, plan)
        record_quantization(report, name, plan, block)
        if settings.sparse_weights:
            record_sparsity(report, name, plan.steps)
    if settings.sparse_weights:
        record_sparsity(report, None)
    gm.recompile()
    compiled = CompiledModule(gm, captured.input_specs, captured.in_spec, captured.out_spec, report, settings.device)
    if settings.debug:
        print(report.table())
    return compiled


def make_settings(module, arg_inputs, kwarg_inputs, *, enabled_precisions, torch_executed_ops, device, **rest) -> CompileSettings:
    precisions = frozenset(enabled_precisions if not isinstance(enabled_precisions, torch.dtype) else {enabled_precisions})
    return CompileSettings(
        enabled_precisions=precisions | {torch.float32},
        torch_executed_ops=normalize_executed_ops(torch_executed_ops),
        device=_pick_device(module, arg_inputs, kwarg_inputs, device),
        **rest,
    )


def _pick_device(module, arg_inputs, kwarg_inputs, device) -> torch.device:
    """Explicit device, else where the example tensors or the weights live, else the CPU."""
    if device is not None:
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        return device
    leaves = torch.utils._pytree.tree_leaves((arg_inputs, kwarg_inputs))
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            return leaf.device
    for p in module.parameters():
        return p.device
    return torch.device("cpu")
