"""Which layers run in 8 bits, and the rewrite that makes them: TensorRT's explicit-quantization rules.

- conv (2-D, incl. grouped and depthwise), linear and matmul take 8-bit inputs: activations
  per tensor (a `quantize` layer, shared by every reader of the same tensor), weights per
  output channel (quantized here, once).
- The epilogue absorbs what follows: a residual add of a tensor that already exists, then an
  activation the kernels' shared epilogue knows.
- An output stays 8-bit only when every reader takes it 8-bit with the same scale (the readers'
  quantize layers disappear: the producer requantizes in its epilogue); otherwise it is
  dequantized in the epilogue to the compute dtype. Network outputs are never 8-bit.
- Everything else (softmax, norms, pooling...) is left to the precision pass (FP16/FP32).

Activation scales come from calibration (`acts`, by tensor name) or, in a QAT/PT2E graph, from
the fake-quantize layer in front of the input (the model's own scale and zero point).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kiln.engine.ir.dtypes import dtype_name
from kiln.engine.ir.network import Layer, Network
from kiln.engine.kernels.pointwise import UNARY_TRITON
from kiln.quantize.numerics import INT8_MAX, STORAGE, per_channel_weight, quantize, scale_from_amax

CANDIDATE_KINDS = frozenset({"conv", "conv_epilogue", "linear", "matmul"})
# What the kernels' generated epilogue can compute after the residual add: every op of the vocabulary.
ABSORBED_ACTIVATIONS = frozenset(UNARY_TRITON)
QUANTIZED_KINDS = {"conv": "qconv", "conv_epilogue": "qconv", "linear": "qlinear", "matmul": "qmatmul"}


@dataclass(frozen=True)
class ActQuant:
    """How one activation tensor is quantized: 8-bit value = clamp(round(x * (1 / scale)) + zero_point, qmin, qmax)."""

    scale: float
    zero_point: int = 0
    qmin: int = -128
    qmax: int = 127


def act_from_amax(amax: float, qdtype: str) -> ActQuant:
    return ActQuant(scale_from_amax(amax, qdtype))


@dataclass
class QuantSpec:
    """What the rewrite needs: the 8-bit type, the activation quantizations, and where they came from."""

    qdtype: str
    acts: dict[str, ActQuant]
    source: str  # shown in the report: "entropy calibration", "QAT/PT2E scales"
    explicit: bool = False  # scales come from fake-quantize layers in the graph
    # Calibrated (not explicit) specs may keep residual adds' inputs in 8 bits (_requantize_outputs); the
    # accuracy guard turns it off when that alone breaks the error budget.
    residuals_in_8_bits: bool = True

    @property
    def quantizes_residuals(self) -> bool:
        """Residual adds may read 8 bits: calibrated specs only (a QAT/PT2E graph says itself what it quantizes)."""
        return self.residuals_in_8_bits and not self.explicit


def activation_inputs(layer: Layer, network: Network) -> list[str]:
    """The inputs of a candidate layer that are activations (quantized per tensor)."""
    if layer.kind == "matmul":
        return [n for n in layer.inputs[:2] if n not in network.constants]
    return [layer.inputs[0]]


def structural_reason(layer: Layer, network: Network) -> str | None:
    """Why a conv/linear/matmul cannot run in 8 bits whatever its scales, else None."""
    a = layer.attrs
    if layer.kind in ("conv", "conv_epilogue"):
        if a.get("transposed"):
            return "transposed convolution"
        if len(a["stride"]) != 2:
            return f"{len(a['stride'])}-D convolution"
    if layer.kind == "matmul":
        if a.get("alpha", 1) != 1 or a.get("beta", 1) != 1:
            return "addmm with alpha/beta"
        if layer.inputs[0] in network.constants:
            return "constant left operand"
        bias = layer.inputs[2]
        if bias is not None and (bias not in network.constants or network.constants[bias].dim() != 1):
            return "bias that is not a 1-D constant"
    if not network.tensors[layer.inputs[0]].dtype.is_floating_point:
        return "non-float input"
    return None


class _Weights:
    """Per-output-channel quantized weights: from a constant (calibration) or a fake-quantize layer (QAT/PT2E)."""

    def __init__(self, network: Network, producer: dict[str, Layer], spec: QuantSpec):
        self.network = network
        self.producer = producer
        self.spec = spec

    def of(self, layer: Layer) -> tuple[torch.Tensor, list[float]] | str:
        name = layer.inputs[1]
        axis = 0 if layer.kind != "matmul" else self.network.tensors[name].rank - 1
        constants = self.network.constants
        if not self.spec.explicit:
            if name not in constants:
                return "weight computed at run time"
            return per_channel_weight(constants[name], axis, self.spec.qdtype)
        fq = self.producer.get(name)
        if fq is None or fq.kind != "fake_quantize" or fq.inputs[0] not in constants:
            return "no fake-quantize on its weight"
        w = constants[fq.inputs[0]].float()
        out_channels = w.shape[axis]
        if fq.attrs["axis"] is None:
            scales, zero_points = [fq.attrs["scale"]] * out_channels, [fq.attrs["zero_point"]]
        else:
            if fq.attrs["axis"] % w.dim() != axis:
                return "weight fake-quantized along another axis than its output channels"
            scales = constants[fq.inputs[1]].float().tolist()
            zero_points = constants[fq.inputs[2]].tolist()
        if any(z != 0 for z in zero_points):
            return "asymmetric weight quantization (zero point != 0)"
        if fq.attrs["qmin"] < -128 or fq.attrs["qmax"] > INT8_MAX:
            return "weight range wider than int8"
        shape = [1] * w.dim()
        shape[axis] = -1
        scale_t = torch.tensor(scales, dtype=torch.float32).view(shape)
        return quantize(w, scale_t, 0, "int8", fq.attrs["qmin"], fq.attrs["qmax"]), [float(s) for s in scales]


def explicit_act(name: str, producer: dict[str, Layer]) -> tuple[str, ActQuant] | None:
    """(the float tensor, its quantization) when `name` is the output of a per-tensor fake-quantize."""
    fq = producer.get(name)
    if fq is None or fq.kind != "fake_quantize" or fq.attrs["axis"] is not None:
        return None
    a = fq.attrs
    shift = -128 if a["qmin"] >= 0 else 0  # an unsigned 0..255 range held as int8: the same values, moved by 128
    if a["qmax"] - a["qmin"] > 255:
        return None
    return fq.inputs[0], ActQuant(float(a["scale"]), int(a["zero_point"]) + shift, int(a["qmin"]) + shift, int(a["qmax"]) + shift)


def quantize_network(network: Network, spec: QuantSpec, keep: dict[str, str], float_dtype: torch.dtype) -> Network:
    """Rewrite `network` in place: every candidate not in `keep` (layer name → why) becomes an 8-bit layer."""
    producer = network.producer()
    weights = _Weights(network, producer, spec)
    qdtype = "int8" if spec.explicit else spec.qdtype
    quantizers: dict[tuple, str] = {}
    layers: list[Layer] = []
    made: list[Layer] = []
    for layer in network.layers:
        if layer.kind not in CANDIDATE_KINDS:
            layers.append(layer)
            continue
        reason = keep.get(layer.name) or structural_reason(layer, network)
        acts = None
        if reason is None:
            acts = _activation_quantization(layer, network, producer, spec)
            reason = acts if isinstance(acts, str) else None
        w = None
        if reason is None and not (layer.kind == "matmul" and layer.inputs[1] not in network.constants):
            w = weights.of(layer)
            reason = w if isinstance(w, str) else None
        if reason is not None:
            layer.attrs["quantization"] = f"kept {dtype_name(float_dtype) if float_dtype != torch.float32 else 'float32'}: {reason}"
            layers.append(layer)
            continue
        inputs = list(layer.inputs) + [None] * (5 - len(layer.inputs))
        attrs = {k: v for k, v in layer.attrs.items() if k not in ("alpha", "beta", "quantization")}
        attrs.update(qdtype=qdtype, activation=layer.attrs.get("activation"), residual=layer.attrs.get("residual", False))
        attrs["activation_attrs"] = {}
        for i, (src, act) in enumerate(acts):
            key = (src, act, qdtype)
            if key not in quantizers:
                quantizers[key] = _add_quantize(network, layers, src, act, qdtype)
            inputs[i] = quantizers[key]
            if i == 0:
                attrs.update(x_scale=act.scale, x_zero_point=act.zero_point)
            else:  # qmatmul's second activation
                inputs[4] = network.add_constant(f"{layer.name}_b_scale", torch.tensor([act.scale], dtype=torch.float32)).name
                attrs["w_zero_point"] = act.zero_point
        if w is not None:
            w_q, scales = w
            w_desc = network.add_constant(f"{layer.inputs[1]}_q", w_q.to(STORAGE[qdtype]) if qdtype == "fp8" else w_q)
            inputs[1] = w_desc.name
            if layer.kind in ("conv", "conv_epilogue"):
                attrs["kernel_size"] = list(w_q.shape[2:])  # kernels read it once the weight is laid out for them
                in_channels = network.tensors[layer.inputs[0]].shape[1]
                attrs["depthwise"] = attrs["groups"] == in_channels == w_q.shape[0] and w_q.shape[1] == 1
            inputs[4] = network.add_constant(f"{layer.inputs[1]}_scale", torch.tensor(scales, dtype=torch.float32)).name
        attrs["quantization"] = f"{qdtype}: {spec.source}"
        qlayer = Layer(QUANTIZED_KINDS[layer.kind], layer.name, inputs, list(layer.outputs), attrs, None, layer.source)
        layers.append(qlayer)
        made.append(qlayer)
    network.layers = layers
    _absorb_epilogues(network, made)
    outputs = set(network.outputs)
    for q in made:
        out = network.tensors[q.outputs[0]]
        dtype = out.dtype if q.outputs[0] in outputs else float_dtype
        out.dtype = dtype
        q.attrs["out_dtype"] = q.attrs["dtype"] = dtype_name(dtype)
    # Fake-quantize layers whose readers all became 8-bit go first, so they do not count as float readers.
    _remove_dead_layers(network)
    _requantize_outputs(network, made, residuals_in_8_bits=spec.quantizes_residuals)
    _remove_dead_layers(network)
    return network


def _activation_quantization(layer, network, producer, spec) -> list[tuple[str, ActQuant]] | str:
    found = []
    for name in activation_inputs(layer, network):
        if spec.explicit:
            act = explicit_act(name, producer)
            if act is None:
                return "no per-tensor fake-quantize on its input"
            found.append(act)
        elif name in spec.acts:
            found.append((name, spec.acts[name]))
        else:
            return "input not calibrated"
    return found


def _add_quantize(network: Network, layers: list[Layer], src: str, act: ActQuant, qdtype: str) -> str:
    desc = network.tensors[src]
    attrs = {"scale": act.scale, "zero_point": act.zero_point, "qmin": act.qmin, "qmax": act.qmax, "qdtype": qdtype}
    attrs["dtype"] = dtype_name(STORAGE[qdtype])
    (out,) = network.add_layer("quantize", [desc], [(list(desc.shape), STORAGE[qdtype])], attrs, source="quantize placement")
    layers.append(network.layers.pop())
    return out.name


def _absorb_epilogues(network: Network, made: list[Layer]) -> None:
    """Residual add, then activation, into the 8-bit layer's epilogue (when each intermediate has one reader)."""
    readers = network.consumers()
    order = {layer.name: i for i, layer in enumerate(network.layers)}
    producer = network.producer()
    outputs = set(network.outputs)
    gone: set[str] = set()

    def only_reader(name):
        users = readers.get(name, [])
        return users[0] if len(users) == 1 and name not in outputs else None

    for q in made:
        last = q.outputs[0]
        if q.inputs[3] is None:
            add = only_reader(last)
            other = [n for n in (add.inputs if add is not None else []) if n != last]
            if (
                add is not None
                and add.kind == "binary"
                and add.attrs.get("op") == "add"
                and add.attrs.get("alpha", 1) == 1
                and None not in add.inputs
                and len(other) == 1
                and other[0] not in network.constants
                and list(network.tensors[other[0]].shape) == list(network.tensors[last].shape)
                and network.tensors[other[0]].dtype == network.tensors[last].dtype
                and (other[0] not in producer or order[producer[other[0]].name] < order[q.name])
            ):
                q.inputs[3] = other[0]
                q.attrs["residual"] = True
                gone.add(add.name)
                last = add.outputs[0]
        if q.attrs.get("activation") is None:
            act = only_reader(last)
            same_dtype = act is not None and network.tensors[act.outputs[0]].dtype == network.tensors[last].dtype
            if same_dtype and act.kind == "unary" and act.attrs.get("op") in ABSORBED_ACTIVATIONS:
                q.attrs["activation"] = act.attrs["op"]
                q.attrs["activation_attrs"] = {k: v for k, v in act.attrs.items() if k != "op"}
                gone.add(act.name)
                last = act.outputs[0]
        q.outputs = [last]
    network.layers = [layer for layer in network.layers if layer.name not in gone]


def _requantize_outputs(network: Network, made: list[Layer], residuals_in_8_bits: bool) -> None:
    """An 8-bit layer's output stays 8-bit when every reader takes 8 bits: quantize layers (with one set of
    parameters), and 8-bit layers reading it as their residual, which dequantize it in their epilogue.

    The residual readers matter: a ResNet block's output feeds the next block's first conv (through a
    quantize) and that block's residual add. Kept in FP16 for the add, every such tensor was written in
    FP16 and read again by a quantize layer: on resnet50 at batch 128 those quantizes were 22% of the
    INT8 engine's time on the H100. TensorRT quantizes the residual too. Not for QAT/PT2E graphs
    (`residuals_in_8_bits` False): their residual is float unless the graph says otherwise, and the
    engine computes what the graph simulates."""
    readers = network.consumers()
    outputs = set(network.outputs)
    eight_bit = {q.name for q in made}
    rename: dict[str, str] = {}
    dropped: set[str] = set()
    for q in made:
        out = q.outputs[0]
        users = readers.get(out, [])
        quantizers = [u for u in users if u.kind == "quantize"]
        residual_readers = [
            u
            for u in users
            if residuals_in_8_bits and u.name in eight_bit and u.inputs[3] == out and out not in u.inputs[:3] + u.inputs[4:]
        ]
        if out in outputs or not quantizers or len(quantizers) + len(residual_readers) != len(users):
            continue
        params = {tuple(sorted((k, v) for k, v in u.attrs.items())) for u in quantizers}
        if len(params) != 1:
            continue
        u = quantizers[0].attrs
        storage = STORAGE[u["qdtype"]]
        q.attrs.update(out_dtype=dtype_name(storage), dtype=dtype_name(storage), out_scale=u["scale"], out_zero_point=u["zero_point"])
        q.attrs.update(out_qmin=u["qmin"], out_qmax=u["qmax"])
        network.tensors[out].dtype = storage
        for reader in residual_readers:
            reader.attrs.update(res_scale=u["scale"], res_zero_point=u["zero_point"])
        for user in quantizers:
            rename[user.outputs[0]] = out
            dropped.add(user.name)
    if not rename:
        return
    network.layers = [layer for layer in network.layers if layer.name not in dropped]
    for layer in network.layers:
        layer.inputs = [rename.get(n, n) if n is not None else None for n in layer.inputs]


def _remove_dead_layers(network: Network) -> None:
    used = set(network.outputs)
    kept = []
    for layer in reversed(network.layers):
        if any(o in used for o in layer.outputs):
            kept.append(layer)
            used.update(n for n in layer.inputs if n is not None)
    network.layers = kept[::-1]
    for name in [n for n in network.constants if n not in used]:
        del network.constants[name]
        del network.tensors[name]
