"""Tensors over HTTP: JSON lists, or NumPy's .npy (one tensor) and .npz (several), never pickles.

Request bodies:
- application/json: {"inputs": [T, ...]} where T is a nested list (it takes the input's own
  dtype) or {"data": nested list, "dtype": "float16"}; a single input may be given as T alone
  under "inputs" only if wrapped in the list.
- application/x-npy: one array, the model's only input.
- application/x-npz: one array per input, in the order of their names (input_0, input_1, ... or
  the model's input names).
Responses use the same format: {"outputs": [{"data", "dtype", "shape"}]}, .npy for one output,
.npz (output_0, ...) for several.
"""

from __future__ import annotations

import io
import json

import numpy as np
import torch

from kiln.engine.ir.dtypes import dtype_name
from kiln.errors import KilnError

JSON = "application/json"
NPY = "application/x-npy"
NPZ = "application/x-npz"

_TORCH_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}


class RequestError(KilnError):
    """A request body that is not tensors in a format Kiln serves (HTTP 400), or of a type it does not take (415)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def media_type(content_type: str | None) -> str:
    kind = (content_type or JSON).split(";")[0].strip().lower()
    if kind in ("", "*/*"):
        return JSON
    if kind not in (JSON, NPY, NPZ):
        raise RequestError(f"content type {kind!r} is not served; send {JSON}, {NPY} or {NPZ}.", status=415)
    return kind


def decode(body: bytes, content_type: str | None, specs: list) -> list[torch.Tensor]:
    """The request's input tensors, in the model's input order (shapes and dtypes are checked later, by the engine)."""
    kind = media_type(content_type)
    if kind == JSON:
        return _decode_json(body, specs)
    try:
        loaded = np.load(io.BytesIO(body), allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError, OSError, zipfile errors for a bad file
        raise RequestError(f"the body is not a {kind} file: {type(exc).__name__}: {exc}") from None
    if kind == NPY:
        if not isinstance(loaded, np.ndarray):
            raise RequestError(f"{NPY} body holds more than one array; send {NPZ} for several inputs.")
        arrays = [loaded]
    else:
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise RequestError(f"{NPZ} body is a single array; send it as {NPY}.")
        arrays = [loaded[k] for k in _npz_order(list(loaded.files), specs)]
    return [torch.from_numpy(np.array(a)) for a in arrays]


def _npz_order(keys: list[str], specs: list) -> list[str]:
    names = [s.name for s in specs]
    if set(keys) == set(names):
        return names
    numbered = [f"input_{i}" for i in range(len(keys))]
    if set(keys) == set(numbered):
        return numbered
    return keys  # np.savez keeps the order it was given; the engine checks count, shapes and dtypes


def _decode_json(body: bytes, specs: list) -> list[torch.Tensor]:
    try:
        payload = json.loads(body or b"null")
    except ValueError as exc:
        raise RequestError(f"the body is not JSON: {exc}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
        raise RequestError('a JSON request is {"inputs": [tensor, ...]}, each tensor a nested list or {"data": ..., "dtype": ...}.')
    tensors = []
    for i, item in enumerate(payload["inputs"]):
        spec_dtype = specs[i].dtype if i < len(specs) else torch.float32
        data, dtype = (item.get("data"), item.get("dtype")) if isinstance(item, dict) else (item, None)
        if dtype is not None and dtype not in _TORCH_DTYPES:
            raise RequestError(f"input {i}: dtype {dtype!r} is not one of {sorted(_TORCH_DTYPES)}.")
        try:
            tensors.append(torch.tensor(data, dtype=_TORCH_DTYPES[dtype] if dtype else spec_dtype))
        except (TypeError, ValueError, RuntimeError) as exc:
            raise RequestError(f"input {i} is not a rectangular nested list of numbers: {exc}") from None
    return tensors


def encode(outputs: list[torch.Tensor], kind: str) -> tuple[bytes, str]:
    outputs = [t.detach().cpu() for t in outputs]
    if kind == JSON:
        body = {"outputs": [{"data": _numpy(t).tolist(), "dtype": dtype_name(t.dtype), "shape": list(t.shape)} for t in outputs]}
        return json.dumps(body).encode(), JSON
    arrays = [_numpy(t) for t in outputs]
    buffer = io.BytesIO()
    if len(arrays) == 1:
        np.save(buffer, arrays[0], allow_pickle=False)
        return buffer.getvalue(), NPY
    np.savez(buffer, **{f"output_{i}": a for i, a in enumerate(arrays)})
    return buffer.getvalue(), NPZ


def _numpy(t: torch.Tensor) -> np.ndarray:
    # NumPy has no bfloat16: widen it, as a JSON client would see it.
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def encode_request(tensors: list[torch.Tensor], kind: str = JSON) -> tuple[bytes, str]:
    """What a client sends (used by tests and the Python examples in docs/deployment.md)."""
    if kind == JSON:
        body = {"inputs": [{"data": t.tolist(), "dtype": dtype_name(t.dtype)} for t in tensors]}
        return json.dumps(body).encode(), JSON
    buffer = io.BytesIO()
    if kind == NPY:
        (t,) = tensors
        np.save(buffer, _numpy(t), allow_pickle=False)
        return buffer.getvalue(), NPY
    np.savez(buffer, **{f"input_{i}": _numpy(t) for i, t in enumerate(tensors)})
    return buffer.getvalue(), NPZ


def decode_response(body: bytes, content_type: str) -> list[torch.Tensor]:
    kind = media_type(content_type)
    if kind == JSON:
        return [torch.tensor(o["data"], dtype=_TORCH_DTYPES[o["dtype"]]) for o in json.loads(body)["outputs"]]
    loaded = np.load(io.BytesIO(body), allow_pickle=False)
    if kind == NPY:
        return [torch.from_numpy(np.array(loaded))]
    return [torch.from_numpy(np.array(loaded[f"output_{i}"])) for i in range(len(loaded.files))]
