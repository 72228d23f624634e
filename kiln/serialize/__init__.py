"""kiln.save / kiln.load: one .kiln file holds a whole CompiledModule as data.

The manifest (JSON) holds the top-level FX graph, the engine plans, the input specs,
the pytree in/out specs, the partition report and what the file was built with (device,
GPU, versions: compat.py); the weights of every plan and every fallback constant go in one
safetensors blob. container.py frames and checksums them.

A SizeVariants (one engine per small size of a range from 1, and one for the rest) is one file
too: its manifest lists each variant's manifest under "size_variants", in call order, and the
one blob holds every variant's weights under "variant/<i>/".
"""

from __future__ import annotations

import os
import tempfile
import warnings

import torch
import torch.utils._pytree as pytree

import kiln.engine.kernels  # noqa: F401  (registers every tactic, so plans can name them)
from kiln.capture.input_spec import Input
from kiln.engine.module import EngineModule
from kiln.engine.plan import Plan
from kiln.errors import CorruptFileError, IncompatibleFileError, KilnError
from kiln.module import CompiledModule
from kiln.report.partition_report import PartitionReport
from kiln.serialize import compat, container
from kiln.serialize.graph_json import graph_from_json, graph_to_json
from kiln.serialize.weights import pack_weights, unpack_weights
from kiln.size_variants import SizeVariants

_ENGINE_KEY = "engine/{block}/{name}"
_CONST_KEY = "const/{name}"
_VARIANT_KEY = "variant/{index}/{key}"


def save(compiled: CompiledModule | SizeVariants, path: str | os.PathLike) -> None:
    """Write `compiled` to `path` as one .kiln file (replaced atomically, so a crash never leaves half a file)."""
    if not isinstance(compiled, (CompiledModule, SizeVariants)):
        raise KilnError(f"kiln.save expects the CompiledModule that kiln.compile returned, got {type(compiled).__name__}.")
    data = to_bytes(compiled)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".kiln-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(
    path: str | os.PathLike, device: torch.device | str | None = None, retime: bool = False
) -> CompiledModule | SizeVariants:
    """Read a .kiln file onto `device` (default: the device it was compiled for).

    On another device type or GPU model than the build's, tactics that cannot run there are
    re-chosen (the reference where nothing faster is known) with a KilnWarning; `retime=True`
    times every layer's tactics on this device instead, as a fresh compile would."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    return from_bytes(data, source=path, device=device, retime=retime)


def to_bytes(compiled: CompiledModule | SizeVariants) -> bytes:
    if isinstance(compiled, SizeVariants):
        return _size_variants_to_bytes(compiled)
    manifest, tensors = _module_manifest(compiled)
    weights, manifest["weight_orders"] = pack_weights(tensors)
    return container.pack(manifest, weights)


def _size_variants_to_bytes(compiled: SizeVariants) -> bytes:
    parts, tensors = [], {}
    for index, variant in enumerate(compiled.variants):
        if not isinstance(variant, CompiledModule):
            raise KilnError(f"cannot save: size variant {index} is a {type(variant).__name__}, not a CompiledModule.")
        manifest, own = _module_manifest(variant)
        parts.append(manifest)
        tensors.update({_VARIANT_KEY.format(index=index, key=key): value for key, value in own.items()})
    main = compiled.main
    # The file-level facts (versions, build device) are the main engine's: load checks and fits by them once.
    manifest = {key: parts[-1][key] for key in ("kiln_version", "torch_version", "built_on")}
    manifest.update(device=str(main.device), size_variants=parts)
    weights, manifest["weight_orders"] = pack_weights(tensors)
    return container.pack(manifest, weights)


def _module_manifest(compiled: CompiledModule) -> tuple[dict, dict[str, torch.Tensor]]:
    gm = compiled.graph_module
    engines = compiled.engine_blocks
    tensors: dict[str, torch.Tensor] = {}
    plans = {}
    for block, engine in engines.items():
        plans[block] = engine.plan.to_json()
        for name, value in engine.plan.weights.items():
            tensors[_ENGINE_KEY.format(block=block, name=name)] = value
    constants = sorted({n.target for n in gm.graph.nodes if n.op == "get_attr"})
    for name in constants:
        tensors[_CONST_KEY.format(name=name)] = _attr(gm, name)
    manifest = {
        "kiln_version": compat.kiln_version(),
        "torch_version": torch.__version__,
        "built_on": compat.environment(compiled.device),
        "device": str(compiled.device),
        "graph": graph_to_json(gm, set(engines)),
        "engines": plans,
        "constants": constants,
        "inputs": [s.to_json() for s in compiled.input_specs],
        "in_spec": _dump_spec(compiled.in_spec, "inputs"),
        "out_spec": _dump_spec(compiled.out_spec, "outputs"),
        "report": compiled.report.to_json(),
    }
    return manifest, tensors


def from_bytes(
    data: bytes, source: str = "<bytes>", device: torch.device | str | None = None, retime: bool = False
) -> CompiledModule | SizeVariants:
    contents = container.unpack(data, source)
    try:
        return _rebuild_file(contents.manifest, contents.weights, device, retime, source)
    except IncompatibleFileError as exc:
        raise IncompatibleFileError(f"{source} cannot be loaded: {exc}") from None
    except CorruptFileError as exc:
        raise CorruptFileError(f"{source} cannot be loaded: {exc}{compat.versions_note(contents.manifest)}") from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        # The checksum matched, so the file is as written: it was made by a different Kiln or by hand.
        raise CorruptFileError(
            f"{source} cannot be loaded: its manifest is malformed ({type(exc).__name__}: {exc}){compat.versions_note(contents.manifest)}"
        ) from None


def _rebuild_file(manifest: dict, blob: bytes, device, retime: bool, source: str) -> CompiledModule | SizeVariants:
    compat.check_versions(manifest)
    target = _target_device(manifest["device"], device)
    weights = unpack_weights(blob, manifest["weight_orders"], target)
    fitter = compat.Fitter(manifest, target, retime, source)
    if "size_variants" in manifest:
        parts = manifest["size_variants"]
        if not isinstance(parts, list) or not parts:
            raise CorruptFileError("its manifest lists no size variants")
        variants = []
        for index, part in enumerate(parts):
            prefix = _VARIANT_KEY.format(index=index, key="")
            own = {key[len(prefix) :]: value for key, value in weights.items() if key.startswith(prefix)}
            variants.append(_rebuild(part, own, target, fitter))
        module = SizeVariants(variants)
    else:
        module = _rebuild(manifest, weights, target, fitter)
    fitter.warn()
    return module


def _rebuild(manifest: dict, weights: dict[str, torch.Tensor], target: torch.device, fitter: compat.Fitter) -> CompiledModule:
    root = torch.nn.Module()
    for block, plan_json in manifest["engines"].items():
        compat.check_plan_format(plan_json, block, manifest)
        prefix = _ENGINE_KEY.format(block=block, name="")
        plan_weights = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
        plan = fitter.fit(Plan.from_json(plan_json, plan_weights), block)
        root.add_module(block, EngineModule(plan, block))
    constants = set(manifest["constants"])
    for name in constants:
        _set_attr(root, name, weights[_CONST_KEY.format(name=name)])
    graph = graph_from_json(manifest["graph"], set(manifest["engines"]), constants, target)
    graph.lint()
    gm = torch.fx.GraphModule(root, graph)
    return CompiledModule(
        gm,
        [Input.from_json(s) for s in manifest["inputs"]],
        _load_spec(manifest["in_spec"]),
        _load_spec(manifest["out_spec"]),
        PartitionReport.from_json(manifest["report"]),
        target,
    )


def _target_device(saved: str, requested) -> torch.device:
    device = torch.device(requested if requested is not None else saved)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            hint = "" if requested is not None else " Pass device='cpu' to run it on the CPU."
            raise KilnError(f"this file was compiled for {saved}, but CUDA is not available here.{hint}")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device


def _dump_spec(spec: pytree.TreeSpec, what: str) -> str:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pytree.treespec_dumps(spec)
    except Exception as exc:  # pytree raises NotImplementedError/TypeError for unregistered containers
        raise KilnError(
            f"cannot save: the model's {what} use a container pytree cannot write as JSON ({exc}). "
            "Use tuples, lists and dicts (or register the type with a serialized_type_name)."
        ) from exc


def _load_spec(text: str) -> pytree.TreeSpec:
    if not isinstance(text, str):
        raise CorruptFileError("pytree spec is not a string")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pytree.treespec_loads(text)
    except Exception as exc:  # treespec_loads raises json, key and value errors for a bad spec
        raise CorruptFileError(f"bad pytree spec ({type(exc).__name__}: {exc})") from None


def _attr(module: torch.nn.Module, dotted: str) -> torch.Tensor:
    owner, _, leaf = dotted.rpartition(".")
    value = getattr(module.get_submodule(owner) if owner else module, leaf)
    if not isinstance(value, torch.Tensor):
        raise KilnError(f"cannot save: graph constant {dotted!r} is a {type(value).__name__}, not a tensor.")
    return value


def _set_attr(root: torch.nn.Module, dotted: str, value: torch.Tensor) -> None:
    owner = root
    *path, leaf = dotted.split(".")
    for part in path:
        if not hasattr(owner, part):
            owner.add_module(part, torch.nn.Module())
        owner = getattr(owner, part)
    owner.register_buffer(leaf, value)


__all__ = ["save", "load", "to_bytes", "from_bytes"]
