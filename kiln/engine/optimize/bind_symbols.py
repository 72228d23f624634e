"""Fill Network.symbols: each dynamic dim's range (from the Input specs) and where to read it at call time.

A block's inputs may be the model's inputs or tensors made by PyTorch ops before it; either
way their shapes carry the captured graph's symbols, so a symbol is read from the first
block input dim that is exactly that symbol. The builder times tactics at `opt` and plans
memory for `max`; the runtime evaluates every shape from the values read.
"""

from __future__ import annotations

from kiln.capture.dynamic import symbol_table
from kiln.engine.ir.network import Network, SymbolRange
from kiln.engine.ir.symbolic import symbols_in
from kiln.engine.optimize import OptimizeContext, optimize_pass
from kiln.errors import KilnError


@optimize_pass
def bind_symbols(network: Network, ctx: OptimizeContext) -> Network:
    used = network.free_symbols()
    if not used:
        return network
    ranges = symbol_table(ctx.captured.input_specs)
    sources: dict[str, list[tuple[int, int]]] = {name: [] for name in used}
    for i, name in enumerate(network.inputs):
        for d, dim in enumerate(network.tensors[name].shape):
            if isinstance(dim, str) and dim in sources:
                sources[dim].append((i, d))
    for name in sorted(used):
        if name not in ranges:
            raise KilnError(
                f"an engine block uses the size {name}, which is not a dimension of any model input (a size computed "
                "from tensor values, e.g. by nonzero or masked_select). Put the op that makes it in torch_executed_ops."
            )
        if not sources[name]:
            shapes = "; ".join(f"{n}: {network.tensors[n]}" for n in network.inputs if name in _symbols(network.tensors[n].shape))
            raise KilnError(
                f"an engine block needs the size {name} but none of its inputs has it as a whole dimension "
                f"({shapes or 'it has no input that depends on it'}), so the runtime cannot read it. Put the op that "
                "folds it into another size in torch_executed_ops, or raise min_block_size so the block takes it whole."
            )
        info = ranges[name]
        network.symbols[name] = SymbolRange(name, info.min, info.opt, info.max, sources[name])
    return network


def _symbols(shape) -> set[str]:
    return set().union(*(symbols_in(d) for d in shape)) if shape else set()
