"""Turn generated Triton source text into a @triton.jit function.

triton.jit reads its function's source through `inspect`, so generated text must live in a
real file: each distinct source is written once under the cache folder (named by its SHA-256,
so two processes writing the same kernel write the same bytes) and imported from there.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import sys
import tempfile
import threading
from pathlib import Path

_LOADED: dict[str, object] = {}
_LOCK = threading.Lock()


def cache_dir() -> Path:
    root = os.environ.get("KILN_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "kiln")
    path = Path(root) / "generated"
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_kernel(source: str, name: str):
    """The object called `name` in the module made of `source` (written to disk once, imported once)."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:24]
    with _LOCK:
        module = _LOADED.get(digest)
        if module is None:
            path = cache_dir() / f"kiln_gen_{digest}.py"
            if not path.exists() or path.read_text() != source:
                fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
                with os.fdopen(fd, "w") as f:
                    f.write(source)
                os.replace(tmp, path)
            spec = importlib.util.spec_from_file_location(f"kiln_gen_{digest}", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
            _LOADED[digest] = module
    return getattr(module, name)


def compile_in(source: str, sizes: dict[str, int]) -> str:
    """`source` with each scalar parameter in `sizes` whose value is not a multiple of 16 made a tl.constexpr.

    Triton specialises an integer argument only on being a multiple of 16, so rows of 24, 36 or 40 channels
    were never known to be 16-byte aligned and every row load fell to 2-byte loads: on the H100 a depthwise
    conv over 24 channels took 431 us against cuDNN's 74. A size fixed by the weight is compiled in where that
    tells Triton more; multiples of 16 stay arguments, so layers that differ only in such sizes still share one
    compiled kernel. Each size compiled in is a compile per distinct value: with the GEMM and implicit-GEMM conv
    sizes compiled in too, MobileNetV3-Large's cold build on the H100 took 32.4 s (precompile 15.1 s) where the
    last measure without them was 19.5 s, so only the depthwise template uses it, where the loss was measured."""
    fixed = [name for name, value in sizes.items() if value % 16]
    if not fixed:
        return source
    start = source.index("(", source.index("\ndef ")) + 1
    depth, end = 1, start
    while depth:
        depth += {"(": 1, ")": -1}.get(source[end], 0)
        end += 1
    params = source[start : end - 1]
    for name in fixed:
        params, count = re.subn(rf"(?<![\w.])({name})(?=\s*[,)]|\s*$)", r"\1: tl.constexpr", params, flags=re.M)
        if count != 1:
            raise ValueError(f"kernel parameter {name!r} appears {count} times in the signature, not once")
    return source[:start] + params + source[end - 1 :]
