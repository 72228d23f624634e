"""The engine cache: a compile that was done before is loaded from disk instead of built again.

`kiln.compile(..., engine_cache=True)` (Torch-TensorRT's `cache_built_engines` and
`reuse_cached_engines` in one switch) keys each compile by a SHA-256 of everything its result
depends on: the captured graph (ops, arguments, node names), every weight's bytes, the input
specs and the pytree structure, the settings that shape the engine, the device (GPU name and
compute capability) and the versions of Kiln, PyTorch, Triton and CUDA. Equal key, equal engine.

Entries are ordinary .kiln files, so a hit goes through `kiln.load` and its checksum: a
truncated or altered entry is deleted and rebuilt, never run. The directory is `cache_dir=`,
else $KILN_CACHE_DIR, else ~/.cache/kiln/engines; past `cache_size_limit` bytes the least
recently used entries are removed (a hit refreshes an entry's modification time).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings

import torch

from kiln.errors import KilnError, KilnWarning

KEY_FORMAT = 1
ENTRY_SUFFIX = ".kiln"
# Settings that do not change what is built: how it is reported, and the cache itself.
NOT_IN_KEY = frozenset({"debug", "dryrun", "engine_cache", "cache_dir", "cache_size_limit", "timing_cache_path"})
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
    return f"kiln {__version__} torch {torch.__version__} triton {triton_version}"


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


class EngineCache:
    def __init__(self, directory: str, size_limit: int):
        self.directory = directory
        self.size_limit = size_limit

    def path(self, key: str) -> str:
        return os.path.join(self.directory, key + ENTRY_SUFFIX)

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


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:  # another process evicted it first
        pass


def compile_with_cache(captured, settings):
    """compile_captured through the cache: a hit is loaded, a miss is built and stored."""
    from kiln.api import compile_captured

    uncached = dataclasses.replace(settings, engine_cache=False)
    key = engine_key(captured, settings)
    if key is None:
        if settings.debug:
            print("kiln engine cache: settings hold an object (a calibrator) that cannot be keyed; building without the cache.")
        return compile_captured(captured, uncached)
    cache = EngineCache(cache_directory(settings), settings.cache_size_limit)
    hit = cache.load(key, settings.device)
    if hit is not None:
        if settings.debug:
            print(f"kiln engine cache: loaded {cache.path(key)}")
        return hit
    compiled = compile_captured(captured, uncached)
    cache.store(key, compiled)
    if settings.debug:
        print(f"kiln engine cache: stored {cache.path(key)}")
    return compiled


def clear(directory: str | None = None) -> int:
    """Delete every entry of the cache directory (default: $KILN_CACHE_DIR or ~/.cache/kiln/engines); returns how many."""
    from kiln.settings import CompileSettings

    cache = EngineCache(directory or cache_directory(CompileSettings()), 0)
    entries = cache.entries()
    for entry in entries:
        _remove(entry.path)
    return len(entries)


__all__ = ["engine_key", "EngineCache", "compile_with_cache", "cache_directory", "clear"]
