"""`kiln bench model.kiln`: latency and throughput, summarised as trtexec does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from kiln.cli.app import ExistingFile, UsageError, app, err, kiln_errors, out


@app.command("bench")
def bench_command(
    path: ExistingFile,
    iterations: Annotated[int, typer.Option(min=1, help="timed calls")] = 200,
    warmup: Annotated[int, typer.Option(min=0, help="untimed calls first (record CUDA graphs, warm caches)")] = 20,
    shape: Annotated[str, typer.Option(help="input shapes to run at, for ranged inputs: min, opt or max")] = "opt",
    device: Annotated[str | None, typer.Option(help="load onto this device (default: the one it was compiled for)")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="also write the numbers as JSON")] = None,
) -> None:
    """Time a .kiln file on random inputs: throughput, latency, host time, GPU compute time."""
    import kiln
    from kiln.cli.bench import CPU_WARNING, example_inputs, measure
    from kiln.cli.progress import counted, stage

    with kiln_errors():
        if shape not in ("min", "opt", "max"):
            raise UsageError(f"--shape {shape!r}: use min, opt or max.")
        with stage(f"loading {path}"):
            compiled = kiln.load(path, device=device)
        inputs = example_inputs(compiled.input_specs, compiled.device, shape)
        with counted("benchmarking", iterations) as step:
            result = measure(compiled, inputs, warmup, iterations, on_step=step)
        shapes = ", ".join("x".join(map(str, t.shape)) for t in inputs)
        out.print(f"=== Performance summary: {path.name} on {result.device}, inputs {shapes} ===")
        for name, value in result.summary_rows():
            out.print(f"{name + ':':<22}{value}")
        if not result.is_cuda:
            err.print(f"[yellow]{CPU_WARNING}[/]", highlight=False)
        if json_path is not None:
            json_path.write_text(json.dumps(result.to_json(), indent=2))
