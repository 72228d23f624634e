"""The calibration cache: activation ranges per engine block, and what they were computed for.

One JSON file. Each block's entry records the fingerprint of the block's graph (ops, shapes and
weights), the algorithm, the 8-bit type, the range of each calibrated tensor with the layers
that read it, and the accuracy guard's decisions. Reading it for a graph, algorithm or type it
was not made for raises CalibrationCacheError: a cache is never silently applied elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import os

import torch
from torch.fx import GraphModule

from kiln.errors import KilnError

CACHE_FORMAT = 1


class CalibrationCacheError(KilnError):
    """A calibration cache file is unreadable, or was made for another graph, algorithm or precision."""


def graph_fingerprint(block: GraphModule) -> str:
    """sha256 over the block's ops, argument wiring, shapes, dtypes and weight bytes."""
    digest = hashlib.sha256()
    for node in block.graph.nodes:
        val = node.meta.get("val")
        shape = tuple(val.shape) if isinstance(val, torch.Tensor) else None
        dtype = str(val.dtype) if isinstance(val, torch.Tensor) else None
        args = torch.fx.node.map_arg((node.args, node.kwargs), lambda n: f"%{n.name}")
        digest.update(repr((node.op, node.name, str(node.target), args, shape, dtype)).encode())
        if node.op == "get_attr":
            value = getattr(block, node.target)
            if isinstance(value, torch.Tensor):
                digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_block(path: str, block: str, fingerprint: str, algorithm: str | None, qdtype: str) -> dict | None:
    """This block's entry from the cache at `path`, None if the file does not exist; an error if it does not fit."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            data = json.load(f)
        entries = data["blocks"]
        if data.get("format") != CACHE_FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {CACHE_FORMAT}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CalibrationCacheError(f"calibration cache {path} cannot be read ({exc}). Delete it to calibrate again.") from None
    fix = f"Delete {path} (or pass use_cache=False) to calibrate again for this model."
    entry = entries.get(block)
    if entry is None:
        raise CalibrationCacheError(
            f"calibration cache {path} has no ranges for {block} of this model (it was made for another graph). {fix}"
        )
    if entry.get("fingerprint") != fingerprint:
        raise CalibrationCacheError(
            f"calibration cache {path} was computed for a different graph or different weights than {block} of this model "
            f"(fingerprint {str(entry.get('fingerprint'))[:12]}… vs {fingerprint[:12]}…). {fix}"
        )
    if algorithm is not None and entry.get("algorithm") != algorithm:
        raise CalibrationCacheError(
            f"calibration cache {path} holds {entry.get('algorithm')!r} ranges, but {algorithm!r} was asked for. {fix}"
        )
    if entry.get("qdtype") != qdtype:
        raise CalibrationCacheError(
            f"calibration cache {path} was made for {entry.get('qdtype')}, but this compile asks for {qdtype}. {fix}"
        )
    return entry


def write_block(path: str, block: str, entry: dict) -> None:
    """Add or replace this block's entry, keeping the other blocks' entries."""
    data = {"format": CACHE_FORMAT, "blocks": {}}
    if os.path.exists(path):
        try:
            with open(path) as f:
                old = json.load(f)
            if old.get("format") == CACHE_FORMAT:
                data["blocks"] = dict(old["blocks"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # an unreadable old cache is replaced
    data["blocks"][block] = entry
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
