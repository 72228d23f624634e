"""Normalisations → one `norm` layer kind; `type` says which statistics and which axes.

Inputs are always (x, weight, bias, running_mean, running_var), absent ones None, so every
type shares one layer signature. BatchNorm right after a conv is folded away in lowering;
what reaches here is a standalone one.
"""

import operator

import torch

from kiln.engine.convert.registry import converter, node_arguments

aten = torch.ops.aten


def _only_normalised_output(node):
    """The batch-norm ops also return saved statistics (and updated running stats): the engine makes output 0 only."""
    for user in node.users:
        if user.target is not operator.getitem or user.args[1] != 0:
            return "uses the statistics outputs of the norm (only the normalised output is supported)"
    return None


def _batch_stats_check(node):
    if not node_arguments(node)["training"]:
        return "batch norm without statistics in eval mode"
    return _only_normalised_output(node)


def _functional_check(node):
    return _only_normalised_output(node)


def _add_norm(ctx, norm_type, a, attrs, outputs=None):
    inputs = [a["input"], a.get("weight"), a.get("bias"), a.get("running_mean"), a.get("running_var")]
    return ctx.add("norm", [ctx.maybe_tensor(i) for i in inputs], {"type": norm_type, **attrs}, outputs=outputs)


def _first_output_only(ctx):
    specs = ctx.output_specs()
    return [specs[0]] + [None] * (len(specs) - 1)


@converter(aten._native_batch_norm_legit_no_training.default, supports=_only_normalised_output)
def convert_batch_norm(ctx, node):
    a = node_arguments(node)
    return _add_norm(ctx, "batch", a, {"eps": a["eps"]}, _first_output_only(ctx))


@converter(aten._native_batch_norm_legit.no_stats, supports=_batch_stats_check)
def convert_batch_norm_batch_stats(ctx, node):
    a = node_arguments(node)
    return _add_norm(ctx, "batch_stats", a, {"eps": a["eps"]}, _first_output_only(ctx))


@converter(aten._native_batch_norm_legit_functional.default, supports=_functional_check)
def convert_batch_norm_functional(ctx, node):
    # F.batch_norm(training=True) normalises with the batch's own statistics; the running-stat
    # updates it also returns are dropped by capture, since inference never reads them back.
    a = node_arguments(node)
    if a["training"]:
        a = {**a, "running_mean": None, "running_var": None}
    return _add_norm(ctx, "batch_stats" if a["training"] else "batch", a, {"eps": a["eps"]}, _first_output_only(ctx))


@converter(aten.layer_norm.default)
def convert_layer_norm(ctx, node):
    a = node_arguments(node)
    return _add_norm(ctx, "layer", a, {"shape": list(ctx.value(list(a["normalized_shape"]))), "eps": a["eps"]})


@converter(aten.rms_norm.default)
def convert_rms_norm(ctx, node):
    a = node_arguments(node)
    # eps None means the machine epsilon of the input dtype, decided by the kernel at run time.
    return _add_norm(ctx, "rms", a, {"shape": list(ctx.value(list(a["normalized_shape"]))), "eps": a["eps"]})


@converter(aten.group_norm.default)
def convert_group_norm(ctx, node):
    a = node_arguments(node)
    return _add_norm(ctx, "group", a, {"groups": int(a["num_groups"]), "eps": a["eps"]})


@converter(aten.instance_norm.default)
def convert_instance_norm(ctx, node):
    a = node_arguments(node)
    if a["use_input_stats"]:
        # With input statistics the running stats would only be updated, never read: keep them out of the engine.
        a = {**a, "running_mean": None, "running_var": None}
    return _add_norm(ctx, "instance", a, {"use_input_stats": bool(a["use_input_stats"]), "eps": a["eps"]})


@converter(aten.native_layer_norm.default, supports=_only_normalised_output)
def convert_native_layer_norm(ctx, node):
    # The mean and rstd outputs are for the backward pass; a graph that reads them stays in PyTorch.
    a = node_arguments(node)
    attrs = {"shape": list(ctx.value(list(a["normalized_shape"]))), "eps": a["eps"]}
    return _add_norm(ctx, "layer", a, attrs, _first_output_only(ctx))


@converter(aten.native_group_norm.default, supports=_only_normalised_output)
def convert_native_group_norm(ctx, node):
    # N, C and HxW only restate the input's shape, which the layer reads itself.
    a = node_arguments(node)
    return _add_norm(ctx, "group", a, {"groups": int(a["group"]), "eps": a["eps"]}, _first_output_only(ctx))
