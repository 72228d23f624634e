import torch
from torch.fx import GraphModule

from kiln.lowering.constants import add_constant, constant_of
from kiln.quantize.qdq_graph import is_quantization_op

# Folding must not turn a small weight into a huge one (an expand to the batch size, say);
# up to 1 MB it always pays (Swin's gathered relative-position bias is 115 KB per block).
_MAX_GROWTH = 4
_ALWAYS_OK_BYTES = 1 << 20


# Creation ops whose values are undefined: folding would bake whatever memory held.
_UNINITIALIZED = frozenset({"aten::empty", "aten::empty_strided", "aten::empty_like", "aten::new_empty"})


def fold_constants(gm: GraphModule) -> GraphModule:
    """Evaluate, once at compile time, every op whose inputs are all constants (e.g. weight.t()).

    Ops without tensor inputs and with static arguments count too (arange, full, scalar_tensor):
    Swin's shifted-window roll computes its indices as arange + shift mod size, and its
    relative-position bias as a gather from a weight at such indices; folded, both are
    constants instead of dozens of tiny integer kernels per call."""
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        if _is_nondeterministic(node.target) or (not node.all_input_nodes and node.target._schema.name in _UNINITIALIZED):
            continue
        if is_quantization_op(node.target):  # the engine needs their scales (a fake-quantized weight keeps its own)
            continue
        inputs = [constant_of(gm, a) for a in node.all_input_nodes]
        if any(v is None for v in inputs):
            continue
        env = dict(zip(node.all_input_nodes, inputs))
        args = torch.fx.node.map_arg(node.args, env.__getitem__)
        kwargs = torch.fx.node.map_arg(node.kwargs, env.__getitem__)
        try:
            value = node.target(*args, **kwargs)
        except Exception:  # leave it to the engine or PyTorch at run time
            continue
        if not isinstance(value, torch.Tensor):
            continue
        in_bytes = sum(v.numel() * v.element_size() for v in inputs)
        out_bytes = value.numel() * value.element_size()
        if out_bytes > max(_ALWAYS_OK_BYTES, _MAX_GROWTH * in_bytes):
            continue
        const = add_constant(gm, value.contiguous(), node, node.name)
        node.replace_all_uses_with(const)
        graph.erase_node(node)
    graph.eliminate_dead_code()
    return gm


def _is_nondeterministic(target) -> bool:
    return torch.Tag.nondeterministic_seeded in getattr(target, "tags", ())
