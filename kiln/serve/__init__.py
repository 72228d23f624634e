"""kiln.serve: a .kiln engine behind HTTP and a Python handle, through Ray Serve (pip install "kiln[serve]").

    server = kiln.serve("model.kiln")              # http://127.0.0.1:8000/, one replica per GPU
    outputs = server(x)                            # the Python handle: flattened outputs
    server.shutdown()

Ray Serve runs one replica per GPU (`num_replicas`, each with `num_gpus=1`), restarts a replica
that dies, and scales from one machine to a cluster. Each replica batches the requests it
receives (`@serve.batch`): up to the engine's max batch rows, waiting at most
`batch_wait_timeout_s` for a batch to fill. docs/deployment.md has the HTTP formats.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from kiln.capture.input_spec import Input
from kiln.errors import KilnError


class ServeUnavailableError(KilnError):
    """Ray Serve is not installed."""


@dataclass
class KilnServer:
    """A running deployment: its URL, its Ray Serve handle, and how to stop it."""

    url: str
    handle: object
    num_replicas: int
    max_batch_size: int
    app_name: str
    started_ray: bool

    def __call__(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        return self.handle.infer.remote(*tensors).result()

    def stats(self) -> dict:
        """Batch sizes (rows per engine call) seen by one replica, and its max batch size."""
        return self.handle.stats.remote().result()

    def wait(self) -> None:
        while True:
            time.sleep(1.0)

    def shutdown(self) -> None:
        import ray
        from ray import serve as ray_serve

        ray_serve.shutdown()
        if self.started_ray and ray.is_initialized():
            ray.shutdown()


def serve(
    model,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    num_replicas: int | None = None,
    max_batch_size: int | None = None,
    batch_wait_timeout_s: float = 0.005,
    device: str | None = None,
    app_name: str = "kiln",
    route_prefix: str = "/",
    ray_init: dict | None = None,
) -> KilnServer:
    """Serve `model` (a .kiln path, or a CompiledModule) with Ray Serve; returns when every replica is up."""
    # Ray reports usage to its authors unless told not to; a deployment tool should not phone home.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
        from ray import serve as ray_serve
    except ImportError:
        raise ServeUnavailableError('kiln.serve needs Ray Serve: pip install "kiln[serve]" (or "ray[serve]").') from None
    from kiln.serve.batching import max_rows
    from kiln.serve.replica import KilnReplica

    data, specs, saved_device = _engine_bytes(model)
    on_gpu = torch.device(device or saved_device).type == "cuda"
    # Ray gives each GPU replica one GPU, which it sees as cuda:0, whatever index the engine was built on.
    device = "cuda" if on_gpu else (device or saved_device)
    max_batch_size = max_batch_size or max_rows(specs)
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, **(ray_init or {}))
    if num_replicas is None:
        # One replica per GPU of the whole Ray cluster, not only of this machine.
        num_replicas = max(1, int(ray.cluster_resources().get("GPU", 0))) if on_gpu else 1
    actor = {"num_gpus": 1} if on_gpu else {"num_cpus": 1}
    ray_serve.start(http_options={"host": host, "port": port})
    app = KilnReplica.options(num_replicas=num_replicas, ray_actor_options=actor).bind(data, device, max_batch_size, batch_wait_timeout_s)
    handle = ray_serve.run(app, name=app_name, route_prefix=route_prefix)
    return KilnServer(f"http://{host}:{port}{route_prefix}", handle, num_replicas, max_batch_size, app_name, started_ray)


def _engine_bytes(model) -> tuple[bytes, list[Input], str]:
    from kiln.module import CompiledModule
    from kiln.serialize import container, to_bytes

    if isinstance(model, CompiledModule):
        data = to_bytes(model)
    elif isinstance(model, (str, os.PathLike)):
        with open(model, "rb") as f:
            data = f.read()
    else:
        raise KilnError(f"kiln.serve takes a .kiln path or a CompiledModule, got {type(model).__name__}.")
    manifest = container.unpack(data, str(model) if not isinstance(model, CompiledModule) else "<compiled module>").manifest
    return data, [Input.from_json(s) for s in manifest["inputs"]], manifest["device"]


__all__ = ["serve", "KilnServer", "ServeUnavailableError"]
