"""The engine cache: a compile that was done before is loaded from disk instead of built again.

`kiln.compile(..., engine_cache=True)` (Torch-TensorRT's `cache_built_engines` and
`reuse_cached_engines` in one switch) keys each compile two ways.

The engine key (`engine_key`) is a SHA-256 of everything the result depends on: the captured
graph (ops, arguments, node names), every weight's bytes, the input specs and the pytree
structure, the settings that shape the engine, the device (GPU name and compute capability) and
the versions of Kiln (with a digest of its source), PyTorch, Triton and CUDA. Equal key, equal
engine. It needs the captured graph, so it costs a torch.export (seconds for a ResNet-50).

The module key (`module_key`) is computed from the nn.Module itself, before any capture: every
module's class (qualified name and a digest of the source file that defines it and its bases),
every non-tensor attribute (recursively; an object it cannot describe exactly makes the module
unkeyable), forward hooks (any makes it unkeyable), every parameter, buffer and tensor attribute
(name, dtype, shape and a SHA-256 of its bytes), the input specs, and the same settings, device
and versions. An index entry (by-module/<module key>.json) maps it to the engine key, with a
digest of every source file that the captured graph's stack traces name (helpers in other files
that forward calls); a hit needs all of them unchanged. So a warm compile reads a few source
files, hashes the weights once and loads the .kiln file, with no torch.export. Where the module
key cannot be made, or its index entry is missing or stale, the compile captures and uses the
engine key, which stays the ground truth.

Entries are ordinary .kiln files, so a hit goes through `kiln.load` and its checksum: a
truncated or altered entry is deleted and rebuilt, never run. The directory is `cache_dir=`,
else $KILN_CACHE_DIR, else ~/.cache/kiln/engines; past `cache_size_limit` bytes the least
recently used entries are removed (a hit refreshes an entry's modification time), and index
entries whose engine is gone with them.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import inspect
import json
import os
import re
import types
import warnings

import torch
import torch.utils._pytree as pytree

from kiln.errors import KilnError, KilnWarning

KEY_FORMAT = 2
ENTRY_SUFFIX = ".kiln"
INDEX_DIR = "by-module"
# Settings that do not change what is built: how it is reported, and the cache itself.
NOT_IN_KEY = frozenset({"debug", "dryrun", "engine_cache", "cache_by_module", "cache_dir", "cache_size_limit", "timing_cache_path"})
_PLAIN = (bool, int, float, str, type(None), torch.dtype, torch.device)


def cache_directory(settings) -> str:
    directory = settings.cache_dir or os.environ.get("KILN_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "kiln", "engines")
    return os.path.abspath(directory)


def _settings_items(settings) -> list[tuple[str, str]] | None:
    """The settings as text, or None when one of them is an object (a calibrator) whose identity cannot be keyed."""
    items = []
    for f in dataclasses.fields(settings):
        if f.name in NOT_IN_KEY:
            continue
        value = getattr(settings, f.name)
        if isinstance(value, (frozenset, set, tuple, list)):
            if not all(isinstance(v, _PLAIN) for v in value):
                return None
            value = sorted(str(v) for v in value)
        elif not isinstance(value, _PLAIN):
            return None
        items.append((f.name, str(value)))
    return items


def _device_identity(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"cuda {props.name} sm{props.major}{props.minor} {props.total_memory} CUDA {torch.version.cuda}"
    return device.type


def _versions() -> str:
    from kiln import __version__

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    return f"kiln {__version__} {_kiln_source_digest()} torch {torch.__version__} triton {triton_version}"


@functools.cache
def _kiln_source_digest() -> str:
    """A digest of Kiln's own files: a development checkout keeps its version number while its code changes."""
    root = os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha256()
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith((".py", ".js", ".css")):
                path = os.path.join(directory, name)
                h.update(os.path.relpath(path, root).encode() + b"\0")
                with open(path, "rb") as f:
                    h.update(f.read())
    return h.hexdigest()[:16]


def engine_key(captured, settings) -> str | None:
    """The cache key of compiling `captured` (a CapturedGraph) with `settings`, or None if it cannot be keyed."""
    items = _settings_items(settings)
    if items is None:
        return None
    h = hashlib.sha256()

    def add(*parts) -> None:
        for part in parts:
            h.update(str(part).encode())
            h.update(b"\0")

    add("kiln engine cache", KEY_FORMAT, _versions(), _device_identity(settings.device), items)
    gm = captured.graph_module
    add(gm.code)
    for spec in captured.input_specs:
        add(spec.to_json(), spec.symbolic_shape)
    add(captured.in_spec, captured.out_spec)
    for name, value in sorted(gm.named_buffers()):
        add(name, value.dtype, tuple(value.shape))
        data = value.detach().contiguous()
        if data.numel():
            h.update(data.cpu().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class Unkeyable(Exception):
    """The module holds something whose effect on the graph cannot be described exactly; it is keyed by its capture instead."""


# nn.Module's own bookkeeping: submodules, parameters and buffers are keyed on their own, and
# these hooks run outside forward (state dicts, backward), so they cannot change the graph.
_MODULE_BOOKKEEPING = frozenset(
    {
        "_parameters", "_buffers", "_modules", "_non_persistent_buffers_set", "_state_dict_hooks", "_state_dict_pre_hooks",
        "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks", "_backward_hooks", "_backward_pre_hooks",
        "_is_full_backward_hook", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs",
    }
)  # fmt: skip
# These change what forward computes: a module that has any is keyed by its capture.
_FORWARD_HOOKS = ("_forward_hooks", "_forward_pre_hooks")
_TORCH_FILES = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
_STACK_FILE = re.compile(r'File "([^"]+)", line')


def _file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class _ModuleHasher:
    """Builds the module key; raises Unkeyable for anything it cannot describe exactly."""

    def __init__(self, module: torch.nn.Module):
        self.h = hashlib.sha256()
        self.modules = {id(m) for m in module.modules()}
        self.files: dict[str, str] = {}  # source file -> digest, each file read once
        self.seen_tensors: dict[tuple, str] = {}

    def add(self, *parts) -> None:
        for part in parts:
            self.h.update(str(part).encode())
            self.h.update(b"\0")

    def source(self, obj) -> str:
        """The digest of the file defining a class or function (its whole file: module-level helpers and constants too)."""
        path = None
        try:
            path = inspect.getsourcefile(obj)
        except TypeError:  # a builtin, or defined where no file is known
            pass
        if path is not None and path.startswith(_TORCH_FILES):
            return "torch"  # PyTorch's own code is named by its version
        if path is not None and os.path.isfile(path):
            if path not in self.files:
                self.files[path] = _file_digest(path)
            return f"{path} {self.files[path]}"
        if (getattr(obj, "__module__", "") or "").split(".")[0] == "torch":
            return "torch"
        try:
            text = inspect.getsource(obj)  # e.g. a notebook cell, through linecache
        except (OSError, TypeError):
            raise Unkeyable(f"the source of {getattr(obj, '__qualname__', obj)!r} cannot be read") from None
        return hashlib.sha256(text.encode()).hexdigest()

    def describe(self, value, depth: int = 0) -> str:
        """Text that is equal for two values exactly when they would make equal graphs."""
        if depth > 16:
            raise Unkeyable("an attribute nests too deeply (a cycle?)")
        if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
            return repr(value)
        if isinstance(value, (torch.dtype, torch.device, torch.memory_format, torch.layout, torch.Size, enum.Enum)):
            return f"{type(value).__qualname__}:{value!r}"
        if isinstance(value, (tuple, list)):
            return f"{type(value).__name__}[" + ",".join(self.describe(v, depth + 1) for v in value) + "]"
        if isinstance(value, (set, frozenset)):
            return "set{" + ",".join(sorted(self.describe(v, depth + 1) for v in value)) + "}"
        if isinstance(value, dict):
            items = (f"{self.describe(k, depth + 1)}:{self.describe(v, depth + 1)}" for k, v in value.items())
            return f"{type(value).__name__}{{" + ",".join(items) + "}"
        if isinstance(value, torch.Tensor):
            return self.tensor(value)
        if isinstance(value, type):
            return f"class {value.__module__}.{value.__qualname__} {self.source(value)}"
        if isinstance(value, types.FunctionType):
            closure = [self.describe(c.cell_contents, depth + 1) for c in value.__closure__ or ()]
            return (
                f"function {value.__module__}.{value.__qualname__} {self.source(value)} "
                f"line {value.__code__.co_firstlineno} {hashlib.sha256(value.__code__.co_code).hexdigest()} "
                f"{self.describe(value.__defaults__, depth + 1)} "
                f"{self.describe(value.__kwdefaults__, depth + 1)} {closure}"
            )
        if isinstance(value, (types.BuiltinFunctionType, torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
            bound_to = getattr(value, "__self__", None)
            if bound_to is not None and not isinstance(bound_to, types.ModuleType):
                raise Unkeyable(f"a bound builtin method {value!r}")
            return f"builtin {getattr(value, '__module__', '')}.{getattr(value, '__qualname__', value)}"
        if isinstance(value, types.MethodType):
            if id(value.__self__) not in self.modules:
                raise Unkeyable(f"a method bound to an object outside the module: {value!r}")
            return f"method of {type(value.__self__).__qualname__}: {self.describe(value.__func__, depth + 1)}"
        if isinstance(value, functools.partial):
            return f"partial({self.describe((value.func, value.args, value.keywords), depth + 1)})"
        if dataclasses.is_dataclass(value):
            fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
            return f"{self.describe(type(value), depth + 1)}({self.describe(fields, depth + 1)})"
        if isinstance(value, torch.nn.Module) and id(value) in self.modules:
            return f"module of the tree: {type(value).__qualname__}"  # its state is keyed where it sits in the tree
        raise Unkeyable(f"an attribute of type {type(value).__module__}.{type(value).__qualname__}")

    def tensor(self, t: torch.Tensor) -> str:
        if t.layout != torch.strided or t.is_quantized or t.device.type == "meta" or type(t) not in (torch.Tensor, torch.nn.Parameter):
            raise Unkeyable(f"a {type(t).__name__} of layout {t.layout} on {t.device}")
        shape = f"tensor {t.dtype} {tuple(t.shape)} {t.device.type}"
        if not t.numel():
            return shape
        identity = (str(t.device), t.data_ptr(), t.dtype, tuple(t.shape), t.stride())
        if identity not in self.seen_tensors:  # tied weights are hashed once
            data = t.detach()
            if not data.is_contiguous():
                data = data.contiguous()
            data = data.cpu().reshape(-1).view(torch.uint8).numpy()
            self.seen_tensors[identity] = hashlib.sha256(memoryview(data)).hexdigest()
        return f"{shape} {self.seen_tensors[identity]}"

    def module(self, name: str, m: torch.nn.Module) -> None:
        cls = type(m)
        self.add("module", name, *(f"{c.__module__}.{c.__qualname__} {self.source(c)}" for c in cls.__mro__ if c is not object))
        if isinstance(m, torch.fx.GraphModule):
            # Its forward is generated code kept in memory; the code is the graph.
            self.add("fx code", m.code)
        for key in _FORWARD_HOOKS:
            if getattr(m, key, None):
                raise Unkeyable(f"module {name or '<root>'} has {key.strip('_').replace('_', ' ')}")
        if getattr(m, "_compiled_call_impl", None) is not None:
            raise Unkeyable(f"module {name or '<root>'} was compiled with Module.compile()")
        skip = _MODULE_BOOKKEEPING | set(_FORWARD_HOOKS) | {"_compiled_call_impl"}
        if isinstance(m, torch.fx.GraphModule):
            skip = skip | {"_graph", "_code", "_lineno_map", "_prologue_start", "meta", "_tracer_cls", "_tracer_extras", "_erase_node_pass"}
        for key, value in sorted(vars(m).items()):
            if key not in skip:
                self.add("attr", key, self.describe(value))
        for kind, tensors in (("parameter", m._parameters), ("buffer", m._buffers)):
            for key, value in sorted(tensors.items()):
                self.add(kind, key, "none" if value is None else self.tensor(value), key in m._non_persistent_buffers_set)


def module_key(module: torch.nn.Module, arg_inputs, kwarg_inputs, settings) -> str | None:
    """The cache key of compiling `module` for these inputs with `settings`, computed without capturing; None if it cannot be made."""
    from kiln.capture.input_spec import Input

    items = _settings_items(settings)
    if items is None:
        return None
    if any(getattr(torch.nn.modules.module, hooks) for hooks in ("_global_forward_hooks", "_global_forward_pre_hooks")):
        return None  # global hooks run in every module's forward
    hasher = _ModuleHasher(module)
    hasher.add("kiln module key", KEY_FORMAT, _versions(), _device_identity(settings.device), items)
    leaves, spec = pytree.tree_flatten((tuple(arg_inputs), dict(kwarg_inputs)))
    hasher.add("inputs", spec)
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            leaf = Input.from_tensor(leaf)
        if not isinstance(leaf, Input):
            return None  # capture says what is wrong with it
        # Not the name: capture writes the placeholder's name into an unnamed kiln.Input, so a reused
        # spec would key differently the second time; a hit takes the names given (_name_inputs).
        hasher.add(leaf.min_shape, leaf.opt_shape, leaf.max_shape, leaf.dtype, leaf.format)
    try:
        for name, m in module.named_modules(remove_duplicate=False):
            hasher.module(name, m)
    except Unkeyable as exc:
        if settings.debug:
            print(f"kiln engine cache: the module cannot be keyed without capturing it ({exc}); capturing to key it.")
        return None
    return hasher.h.hexdigest()


def _graph_source_files(captured) -> dict[str, str] | None:
    """Digests of the source files the captured graph's stack traces name (code forward ran), or None if one cannot be read."""
    files = {}
    for node in captured.graph_module.graph.nodes:
        for path in _STACK_FILE.findall(node.meta.get("stack_trace") or ""):
            if path in files or path.startswith(_TORCH_FILES):
                continue
            if not os.path.isfile(path):
                return None  # generated code (exec, fx): no file to check it against later
            files[path] = _file_digest(path)
    return files


class EngineCache:
    def __init__(self, directory: str, size_limit: int):
        self.directory = directory
        self.size_limit = size_limit

    def path(self, key: str) -> str:
        return os.path.join(self.directory, key + ENTRY_SUFFIX)

    def index_path(self, module_key: str) -> str:
        return os.path.join(self.directory, INDEX_DIR, module_key + ".json")

    def engine_for(self, module_key: str) -> str | None:
        """The engine key a module key was last compiled to, if every source file its graph came from is unchanged."""
        try:
            with open(self.index_path(module_key)) as f:
                entry = json.load(f)
            for path, digest in entry["files"].items():
                if _file_digest(path) != digest:
                    return None
            return entry["engine"] if isinstance(entry["engine"], str) else None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):  # absent, unreadable or not ours: capture instead
            return None

    def remember(self, module_key: str, key: str, files: dict[str, str]) -> None:
        path = self.index_path(module_key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump({"engine": key, "files": files}, f)
        os.replace(tmp, path)  # a reader sees the old entry or the new one, never half

    def load(self, key: str, device: torch.device):
        """The cached CompiledModule for `key`, or None (absent, or corrupt: then it is deleted)."""
        from kiln.serialize import load

        path = self.path(key)
        if not os.path.exists(path):
            return None
        try:
            compiled = load(path, device=device)
        except KilnError as exc:
            warnings.warn(f"kiln engine cache: entry {path} cannot be used ({exc}); building the engine again.", KilnWarning, stacklevel=3)
            _remove(path)
            return None
        os.utime(path)  # least recently used goes first
        return compiled

    def store(self, key: str, compiled) -> None:
        from kiln.serialize import save

        os.makedirs(self.directory, exist_ok=True)
        try:
            save(compiled, self.path(key))
        except KilnError as exc:  # a PyTorch part that is not aten ops cannot be saved, so cannot be cached
            warnings.warn(f"kiln engine cache: this engine is not cached: {exc}", KilnWarning, stacklevel=3)
            return
        self.evict(keep=key)

    def entries(self) -> list[os.DirEntry]:
        if not os.path.isdir(self.directory):
            return []
        return [e for e in os.scandir(self.directory) if e.is_file() and e.name.endswith(ENTRY_SUFFIX)]

    def evict(self, keep: str | None = None) -> None:
        entries = sorted(self.entries(), key=lambda e: e.stat().st_mtime)
        total = sum(e.stat().st_size for e in entries)
        for entry in entries:
            if total <= self.size_limit:
                break
            if keep is not None and entry.name == keep + ENTRY_SUFFIX:
                continue
            total -= entry.stat().st_size
            _remove(entry.path)
        for entry in self.index_entries():
            try:
                with open(entry.path) as f:
                    engine = json.load(f).get("engine")
            except (OSError, ValueError, AttributeError):
                engine = None
            if not isinstance(engine, str) or not os.path.exists(self.path(engine)):
                _remove(entry.path)

    def index_entries(self) -> list[os.DirEntry]:
        directory = os.path.join(self.directory, INDEX_DIR)
        if not os.path.isdir(directory):
            return []
        return [e for e in os.scandir(directory) if e.is_file() and e.name.endswith(".json")]


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:  # another process evicted it first
        pass


def load_by_module(module: torch.nn.Module, arg_inputs, kwarg_inputs, settings):
    """(module key or None, the cached CompiledModule or None): the cache looked up before any capture."""
    key = module_key(module, arg_inputs, kwarg_inputs, settings) if settings.cache_by_module else None
    if key is None:
        return None, None
    cache = EngineCache(cache_directory(settings), settings.cache_size_limit)
    engine = cache.engine_for(key)
    hit = cache.load(engine, settings.device) if engine is not None else None
    if hit is not None:
        _name_inputs(hit, arg_inputs, kwarg_inputs)
        if settings.debug:
            print(f"kiln engine cache: loaded {cache.path(engine)} (by module key, without capturing)")
    return key, hit


def _name_inputs(compiled, arg_inputs, kwarg_inputs) -> None:
    """Names only label inputs in messages: the ones given win over those the cached compile recorded."""
    from kiln.capture.input_spec import Input

    leaves = pytree.tree_leaves((tuple(arg_inputs), dict(kwarg_inputs)))
    for spec, leaf in zip(compiled.input_specs, leaves):
        if isinstance(leaf, Input) and leaf.name:
            spec.name = leaf.name


def compile_with_cache(captured, settings, module_key: str | None = None):
    """compile_captured through the cache: a hit is loaded, a miss is built and stored; `module_key` is mapped to the engine."""
    from kiln.api import compile_captured

    uncached = dataclasses.replace(settings, engine_cache=False)
    key = engine_key(captured, settings)
    if key is None:
        if settings.debug:
            print("kiln engine cache: settings hold an object (a calibrator) that cannot be keyed; building without the cache.")
        return compile_captured(captured, uncached)
    cache = EngineCache(cache_directory(settings), settings.cache_size_limit)
    compiled = cache.load(key, settings.device)
    if compiled is not None:
        if settings.debug:
            print(f"kiln engine cache: loaded {cache.path(key)}")
    else:
        compiled = compile_captured(captured, uncached)
        cache.store(key, compiled)
        if settings.debug:
            print(f"kiln engine cache: stored {cache.path(key)}")
    files = _graph_source_files(captured) if module_key is not None else None
    if files is not None and os.path.exists(cache.path(key)):
        cache.remember(module_key, key, files)
    return compiled


def clear(directory: str | None = None) -> int:
    """Delete every entry of the cache directory (default: $KILN_CACHE_DIR or ~/.cache/kiln/engines); returns how many."""
    from kiln.settings import CompileSettings

    cache = EngineCache(directory or cache_directory(CompileSettings()), 0)
    entries = cache.entries()
    for entry in entries + cache.index_entries():
        _remove(entry.path)
    return len(entries)


__all__ = ["engine_key", "module_key", "EngineCache", "load_by_module", "compile_with_cache", "cache_directory", "clear"]
