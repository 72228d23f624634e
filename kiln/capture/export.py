"""Capture: torch.export (non-strict) → core-ATen FX graph with weights frozen in as constants."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.utils._pytree as pytree
from torch.export.graph_signature import InputKind, OutputKind

from kiln.capture.dynamic import (
    capture_example,
    dynamic_shapes_for,
    read_symbolic_shapes,
    symbol_table,
    varargs_at,
    verify_largest_sizes,
    verify_small_sizes,
)
from kiln.capture.explain import capture_error
from kiln.capture.input_spec import Input
from kiln.capture.trace import export_core_aten
from kiln.errors import CaptureError, KilnError
from kiln.settings import CompileSettings


@dataclass
class CapturedGraph:
    """A frozen aten graph: placeholders are the user's flattened tensor inputs, weights are get_attrs."""

    graph_module: torch.fx.GraphModule
    in_spec: pytree.TreeSpec
    out_spec: pytree.TreeSpec
    input_specs: list[Input]  # one per placeholder, in order
    input_names: list[str]


def flatten_input_specs(arg_inputs, kwarg_inputs) -> tuple[list, pytree.TreeSpec]:
    leaves, spec = pytree.tree_flatten((tuple(arg_inputs), dict(kwarg_inputs)))
    specs = []
    for i, leaf in enumerate(leaves):
        if isinstance(leaf, Input):
            specs.append(leaf)
        elif isinstance(leaf, torch.Tensor):
            specs.append(Input.from_tensor(leaf))
        else:
            raise KilnError(
                f"input #{i} is {type(leaf).__name__}; kiln.compile takes kiln.Input specs or example tensors "
                "(nested in tuples, lists or dicts). Bind other arguments with functools.partial or a wrapper module."
            )
    return specs, spec


def capture(
    module: torch.nn.Module, arg_inputs, kwarg_inputs, settings: CompileSettings, *, allow_specialization: bool = False
) -> CapturedGraph:
    """`allow_specialization`: a ranged dim the model fixes to one size becomes static instead of an error."""
    specs, flat_spec = flatten_input_specs(arg_inputs, kwarg_inputs)
    examples = [capture_example(s, settings.device) for s in specs]
    args, kwargs = pytree.tree_unflatten(examples, flat_spec)
    dynamic_shapes = dynamic_shapes_for(specs, flat_spec, varargs_at(module))
    try:
        program = export_core_aten(module, tuple(args), kwargs, dynamic_shapes)
    except Exception as exc:  # torch raises many kinds; all mean "could not capture"
        raise capture_error(module, exc) from exc
    mutated = [o.target for o in program.graph_signature.output_specs if o.kind == OutputKind.USER_INPUT_MUTATION]
    if mutated:
        raise CaptureError(
            f"{type(module).__name__} writes in place into its input(s) {mutated}; a Kiln engine returns new tensors "
            "and would silently drop that write. What to do: use the out-of-place op (x = x + 1, not x.add_(1))."
        )
    gm = freeze(program)
    names = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    for spec, name in zip(specs, names):
        if spec.name is None:
            spec.name = name
    read_symbolic_shapes(gm, specs, allow_specialization=allow_specialization)
    symbol_table(specs)  # raises now, at compile time, for a dim Kiln could not read at call time
    verify_small_sizes(module, gm, specs, flat_spec, settings.device)
    verify_largest_sizes(module, gm, specs, flat_spec, settings.device)
    return CapturedGraph(gm, program.call_spec.in_spec, program.call_spec.out_spec, specs, names)


def freeze(program: torch.export.ExportedProgram) -> torch.fx.GraphModule:
    """Turn parameter/buffer/constant placeholders into get_attr constants; keep only user outputs."""
    sig = program.graph_signature
    # The program's graph is edited in place and compiled to Python once, at the end: GraphModule(root, graph)
    # would also generate and compile its code now, before the edits (~0.1 s for a 600-node graph).
    gm = torch.fx.GraphModule(torch.nn.Module(), torch.fx.Graph())
    graph = program.graph_module.graph
    graph.owning_module = gm  # get_attr nodes are checked against the buffers registered below
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    for spec, node in zip(sig.input_specs, placeholders):
        if spec.kind == InputKind.USER_INPUT:
            continue
        if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER):
            value = program.state_dict.get(spec.target)
            if value is None:  # non-persistent buffers live in constants
                value = program.constants[spec.target]
        elif spec.kind == InputKind.CONSTANT_TENSOR:
            value = program.constants[spec.target]
        else:
            raise CaptureError(
                f"input {node.name} is a {spec.kind.name}, which Kiln cannot freeze (custom objects and effect tokens are not supported)."
            )
        attr = "w_" + node.name
        gm.register_buffer(attr, value.detach() if isinstance(value, torch.Tensor) else torch.as_tensor(value))
        with graph.inserting_before(node):
            const = graph.get_attr(attr)
        const.meta = dict(node.meta)
        node.replace_all_uses_with(const)
        graph.erase_node(node)
    output = graph.output_node()
    results = output.args[0]
    keep = [r for r, spec in zip(results, sig.output_specs) if spec.kind == OutputKind.USER_OUTPUT]
    output.args = (tuple(keep),)
    graph.eliminate_dead_code()
    gm.graph = graph
    return gm
