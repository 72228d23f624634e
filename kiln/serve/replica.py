"""The Ray Serve deployment: one replica holds one loaded engine and batches the requests it gets."""

from __future__ import annotations

import asyncio
from collections import Counter

import torch
from ray import serve
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response

from kiln.errors import KilnError
from kiln.serve import codec
from kiln.serve.batching import Request, batchable, max_batch_of, request_rows, run_batch, validate


@serve.deployment
class KilnReplica:
    def __init__(self, data: bytes, device: str | None, max_batch_size: int | None, batch_wait_timeout_s: float):
        from kiln.serialize import from_bytes

        self.module = from_bytes(data, source="the served .kiln file", device=device)
        self.max_rows = max_batch_size or max_batch_of(self.module)
        self.infer_batch.set_max_batch_size(self.max_rows)
        self.infer_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.batch_sizes: Counter = Counter()

    @serve.batch(batch_size_fn=request_rows)
    async def infer_batch(self, requests: list[Request]) -> list:
        # The engine call blocks; run it off the event loop so the replica keeps accepting requests.
        results, calls = await asyncio.get_running_loop().run_in_executor(None, run_batch, self.module, requests, self.max_rows)
        self.batch_sizes.update(calls)
        return results

    async def infer(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        """The Python handle's entry: the model's inputs in, its flattened outputs out (a KilnError for a bad request)."""
        request = Request(list(tensors))
        # Checked before joining a batch: a request with more rows than a batch holds must not reach the batcher.
        validate(self.module, request)
        result = await self.infer_batch(request)
        if isinstance(result, Exception):
            raise result
        return result

    def stats(self) -> dict:
        return {"batch_sizes": dict(self.batch_sizes), "max_batch_size": self.max_rows}

    def metadata(self) -> dict:
        return {
            "inputs": [{"name": s.name, "spec": s.describe()} for s in self.module.input_specs],
            "device": str(self.module.device),
            "max_batch_size": self.max_rows,
            "batching": batchable(self.module),
        }

    async def __call__(self, http: HttpRequest) -> Response:
        path = http.url.path.rstrip("/").rsplit("/", 1)[-1]
        if http.method == "GET":
            return JSONResponse(self.stats() if path == "stats" else self.metadata())
        if http.method != "POST":
            return JSONResponse({"error": f"{http.method} is not served; POST tensors, GET metadata or /stats."}, status_code=405)
        try:
            kind = codec.media_type(http.headers.get("content-type"))
            tensors = codec.decode(await http.body(), kind, self.module.input_specs)
        except codec.RequestError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        request = Request(tensors)
        try:
            validate(self.module, request)
        except KilnError as exc:
            result = exc
        else:
            result = await self.infer_batch(request)
        if isinstance(result, KilnError):
            # A wrong shape, rank or dtype: the engine's own message, and the replica carries on.
            return JSONResponse({"error": str(result), "type": type(result).__name__}, status_code=400)
        body, media = codec.encode(result, kind)
        return Response(body, media_type=media)
