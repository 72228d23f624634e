"""Turn generated Triton source text into a @triton.jit function.

triton.jit reads its function's source through `inspect`, so generated text must live in a
real file: each distinct source is written once under the cache folder (named by its SHA-256,
so two processes writing the same kernel write the same bytes) and imported from there.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
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
