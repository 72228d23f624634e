"""Dynamic batching for one replica: requests that arrived together run as one engine call.

Each request is checked against the engine's input specs on its own first, so a bad request
fails alone with the engine's message. The good ones are grouped by everything but their batch
dimension (shapes past dim 0, dtypes), concatenated along dim 0 up to the engine's max batch,
run once, and each output is split back by the rows each request sent. An engine whose inputs
have a fixed batch dimension cannot take more rows, so its requests run one by one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.utils._pytree as pytree

from kiln.errors import InputMismatchError, KilnError
from kiln.module import CompiledModule, check_input


@dataclass
class Request:
    tensors: list[torch.Tensor]

    @property
    def rows(self) -> int:
        return self.tensors[0].shape[0] if self.tensors and self.tensors[0].dim() > 0 else 1

    def signature(self) -> tuple:
        return tuple((tuple(t.shape[1:]), t.dtype) for t in self.tensors)


def request_rows(requests: list[Request]) -> int:
    """Ray Serve's batch_size_fn: a batch is full when its rows, not its requests, reach the max batch."""
    return sum(r.rows for r in requests)


def max_rows(specs: list) -> int:
    """The most rows one call takes: the smallest max of every input's dim 0 (1 for an engine without a batch range)."""
    return min(s.max_shape[0] for s in specs) if ranged_batch(specs) else 1


def ranged_batch(specs: list) -> bool:
    return bool(specs) and all(len(s.min_shape) > 0 and s.min_shape[0] < s.max_shape[0] for s in specs)


def max_batch_of(module: CompiledModule) -> int:
    return max_rows(module.input_specs)


def batchable(module: CompiledModule) -> bool:
    return ranged_batch(module.input_specs)


def validate(module: CompiledModule, request: Request) -> None:
    """The engine's own checks (count, rank, shape range, dtype), for one request, before it joins a batch."""
    specs = module.input_specs
    if len(request.tensors) != len(specs):
        raise InputMismatchError(
            f"the model takes {len(specs)} input(s) ({', '.join(s.describe() for s in specs)}); the request has {len(request.tensors)}."
        )
    for i, (value, spec) in enumerate(zip(request.tensors, specs)):
        # Requests are decoded on the CPU and run_batch moves them to the engine's device: only their own device counts.
        check_input(value, spec, i, value.device)


def call(module: CompiledModule, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    args, kwargs = pytree.tree_unflatten(tensors, module.in_spec)
    with torch.no_grad():
        return pytree.tree_leaves(module(*args, **kwargs))


def run_batch(module: CompiledModule, requests: list[Request], max_rows: int) -> tuple[list, list[int]]:
    """Each request's outputs (a list of tensors) or its error (a KilnError); and the row count of every engine call made."""
    results: list = [None] * len(requests)
    calls: list[int] = []
    groups: dict[tuple, list[int]] = {}
    for i, request in enumerate(requests):
        try:
            validate(module, request)
        except KilnError as exc:
            results[i] = exc
            continue
        groups.setdefault(request.signature(), []).append(i)
    for members in groups.values():
        for chunk in _chunks(members, requests, max_rows if batchable(module) else 1):
            _run_chunk(module, requests, chunk, results, calls)
    return results, calls


def _chunks(members: list[int], requests: list[Request], max_rows: int):
    chunk, rows = [], 0
    for i in members:
        if chunk and rows + requests[i].rows > max_rows:
            yield chunk
            chunk, rows = [], 0
        chunk.append(i)
        rows += requests[i].rows
    if chunk:
        yield chunk


def _run_chunk(module, requests, chunk: list[int], results: list, calls: list[int]) -> None:
    device = module.device
    if len(chunk) == 1:
        i = chunk[0]
        calls.append(requests[i].rows)
        results[i] = _guarded(module, [t.to(device) for t in requests[i].tensors])
        return
    rows = [requests[i].rows for i in chunk]
    merged = [torch.cat([requests[i].tensors[k] for i in chunk]).to(device) for k in range(len(requests[chunk[0]].tensors))]
    outputs = _guarded(module, merged)
    if isinstance(outputs, Exception) or any(o.dim() == 0 or o.shape[0] != sum(rows) for o in outputs):
        # Outputs that do not keep the batch on dim 0 (a reduction over it) cannot be split: run one by one.
        for i in chunk:
            _run_chunk(module, requests, [i], results, calls)
        return
    calls.append(sum(rows))
    pieces = [o.split(rows) for o in outputs]
    for n, i in enumerate(chunk):
        # Copies: a view would carry the whole batch's storage back to its caller.
        results[i] = [p[n].clone() for p in pieces]


def _guarded(module, tensors):
    try:
        return [o.cpu() if isinstance(o, torch.Tensor) else o for o in call(module, tensors)]
    except KilnError as exc:
        return exc
