"""`kiln serve model.kiln`: an HTTP endpoint with dynamic batching, through Ray Serve (pip install kiln[serve])."""

from __future__ import annotations

from typing import Annotated

import typer

from kiln.cli.app import ExistingFile, app, kiln_errors, out


@app.command("serve")
def serve_command(
    path: ExistingFile,
    host: Annotated[str, typer.Option(help="address to bind; 0.0.0.0 exposes it to the network")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    replicas: Annotated[int | None, typer.Option(min=1, help="replicas (default: one per GPU, or 1 on the CPU)")] = None,
    max_batch_size: Annotated[
        int | None, typer.Option(min=1, help="requests batched into one call (default: the engine's max batch)")
    ] = None,
    batch_wait_ms: Annotated[float, typer.Option(min=0.0, help="how long a batch waits to fill")] = 5.0,
    device: Annotated[str | None, typer.Option(help="cuda or cpu (default: the one it was compiled for)")] = None,
) -> None:
    """Serve a .kiln file over HTTP (POST / with JSON or .npy/.npz) until interrupted."""
    from kiln.serve import serve

    with kiln_errors():
        server = serve(
            str(path),
            host=host,
            port=port,
            num_replicas=replicas,
            max_batch_size=max_batch_size,
            batch_wait_timeout_s=batch_wait_ms / 1000.0,
            device=device,
        )
        out.print(f"serving {path} at {server.url} ({server.num_replicas} replica(s), max batch {server.max_batch_size}); Ctrl-C stops it")
        try:
            server.wait()
        except KeyboardInterrupt:
            pass
        finally:
            server.shutdown()
