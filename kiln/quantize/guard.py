"""The accuracy guard: measure, on calibration batches, what quantization costs the block's outputs.

With every candidate quantized, the relative L2 error of the block's outputs against FP32 is
measured. Above the budget, each layer's harm is measured alone (only it quantized), and the
most harmful layers are kept in the compute dtype one at a time, re-measuring, until the error
is within the budget. Every decision goes into the report with the number behind it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from kiln.engine.ir.network import Layer, Network
from kiln.quantize.placement import QUANTIZED_KINDS, QuantSpec, quantize_network
from kiln.quantize.reference_run import constants_on, floats_as, relative_error, run_network


def clone_network(network: Network) -> Network:
    """A copy whose layers and tensor descs can be rewritten; constant tensors are shared."""
    copy = Network(
        inputs=list(network.inputs),
        outputs=list(network.outputs),
        tensors={n: type(d)(d.name, list(d.shape), d.dtype, d.layout, d.role, dict(d.extra)) for n, d in network.tensors.items()},
        layers=[Layer(x.kind, x.name, list(x.inputs), list(x.outputs), dict(x.attrs), x.precision, x.source) for x in network.layers],
        constants=dict(network.constants),
        symbols=dict(network.symbols),
    )
    copy._used_names = set(network._used_names)
    return copy


@dataclass
class GuardResult:
    keep: dict[str, str] = field(default_factory=dict)  # layer name -> why it stays in float
    error: float = 0.0  # the block's output error with the final choice
    error_all_quantized: float = 0.0
    residuals_in_8_bits: bool = True


class AccuracyGuard:
    def __init__(self, network: Network, spec: QuantSpec, batches: list[list[torch.Tensor]], float_dtype: torch.dtype):
        self.network = network
        self.spec = spec
        # The yardstick is FP32 whatever the model's dtype: a half model's weights and inputs are widened here.
        self.batches = [floats_as(b, torch.float32) for b in batches]
        self.float_dtype = float_dtype
        device = batches[0][0].device if batches and batches[0] else torch.device("cpu")
        self.device = device
        constants = constants_on(network, device, torch.float32)
        self.reference = [run_network(network, b, constants, float_dtype=torch.float32) for b in self.batches]

    def error(self, keep: dict[str, str]) -> tuple[float, Network]:
        quantized = quantize_network(clone_network(self.network), self.spec, keep, torch.float32)
        constants = constants_on(quantized, self.device, torch.float32)
        outputs = [run_network(quantized, b, constants, float_dtype=torch.float32) for b in self.batches]
        return relative_error(outputs, self.reference), quantized

    def run(self, budget: float) -> GuardResult:
        full_error, quantized = self.error({})
        result = GuardResult(error=full_error, error_all_quantized=full_error)
        if full_error <= budget:
            return result
        if self.spec.quantizes_residuals:
            # Residuals in float first: dropping that one choice costs less speed than dropping layers.
            eight_bit_residuals, self.spec = self.spec, replace(self.spec, residuals_in_8_bits=False)
            error, float_quantized = self.error({})
            if error < full_error:
                quantized = float_quantized
                result = GuardResult(error=error, error_all_quantized=error, residuals_in_8_bits=False)
                if error <= budget:
                    return result
            else:
                self.spec = eight_bit_residuals
        names = [layer.name for layer in quantized.layers if layer.kind in QUANTIZED_KINDS.values()]
        harm = {}
        for name in names:
            alone = {other: "measuring another layer" for other in names if other != name}
            harm[name] = self.error(alone)[0]
        keep: dict[str, str] = {}
        for name in sorted(names, key=harm.get, reverse=True):
            keep[name] = f"quantized alone it raised the output error to {harm[name]:.4f} (budget {budget})"
            result.error = self.error(keep)[0]
            if result.error <= budget:
                break
        result.keep = keep
        result.residuals_in_8_bits = self.spec.residuals_in_8_bits
        return result

