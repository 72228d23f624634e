"""View tactics for permute/select/slice/reshape layers that optimize/views.py marked `view_ok`: no kernel, no copy."""

from kiln.engine.ir.symbolic import evaluate
from kiln.engine.kernels.registry import tactic


def _marked(layer, target) -> bool:
    return target.is_cuda and bool(layer.attrs.get("view_ok"))


@tactic("permute", "view", when=_marked)
def permute_view(layer, inputs, run):
    return inputs[0].permute(layer.attrs["dims"])


@tactic("select", "view", when=_marked)
def select_view(layer, inputs, run):
    return inputs[0].select(layer.attrs["dim"], evaluate(layer.attrs["index"], run.symbols))


@tactic("slice", "view", when=_marked)
def slice_view(layer, inputs, run):
    a = layer.attrs
    start = None if a["start"] is None else evaluate(a["start"], run.symbols)
    end = None if a["end"] is None else evaluate(a["end"], run.symbols)
    return inputs[0][(slice(None),) * a["dim"] + (slice(start, end, a["step"]),)]


@tactic("reshape", "view", when=_marked)
def reshape_view(layer, inputs, run):
    # A view when the strides allow it (squeezing the head split of q/k/v does), else reshape copies once.
    return inputs[0].reshape(run.shape(layer.attrs["shape"]))
