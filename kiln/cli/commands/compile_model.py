"""`kiln compile FILE.py:FUNCTION | model.pt2 --input SHAPE ... -o model.kiln`."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated

import torch
import typer

from kiln.cli.app import UsageError, app, err, kiln_errors, out, quiet_export_warnings
from kiln.cli.progress import stage


def int8_available() -> bool:
    """INT8 post-training quantization comes from kiln.ptq, which a build may not have yet."""
    try:
        return importlib.util.find_spec("kiln.ptq") is not None
    except ModuleNotFoundError:
        return False


def calibrator_from_file(path: Path, specs: list):
    """A kiln.ptq calibrator over a .npy array of N samples stacked like the input, [N, *input_shape[1:]], in batches of the opt batch."""
    import numpy as np

    from kiln import ptq

    if len(specs) != 1:
        raise UsageError(f"--calib takes one .npy array, so it needs a model with one input; this one has {len(specs)}.")
    if not path.is_file():
        raise UsageError(f"--calib {path} does not exist.")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise UsageError(f"--calib {path} is not a .npy array: {exc}") from exc
    spec = specs[0]
    rank = len(spec.opt_shape)
    if array.ndim != rank:
        raise UsageError(f"--calib {path} has shape {array.shape}; expected rank {rank} like the input {spec.describe()}.")
    data = torch.from_numpy(np.ascontiguousarray(array)).to(spec.dtype)
    batch = max(1, spec.opt_shape[0])
    return ptq.DataLoaderCalibrator(list(torch.split(data, batch)))


@app.command("compile")
def compile_command(
    model: Annotated[str, typer.Argument(help="FILE.py:FUNCTION (a function returning an nn.Module) or an ExportedProgram .pt2")],
    output: Annotated[Path, typer.Option("-o", "--output", help="the .kiln file to write")],
    input: Annotated[
        list[str],
        typer.Option(
            "--input", "-i", help="an input shape: 1x3x224x224, a range 1-32x3x224x224, dtype after ':' (1x128:int64); repeat per input"
        ),
    ],
    fp16: Annotated[bool, typer.Option("--fp16", help="allow FP16 where accurate")] = False,
    bf16: Annotated[bool, typer.Option("--bf16", help="allow BF16 where accurate")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="INT8 post-training quantization (needs --calib)")] = False,
    calib: Annotated[Path | None, typer.Option("--calib", help="calibration inputs for --int8: a .npy array")] = None,
    device: Annotated[str, typer.Option(help="cuda, cuda:1 or cpu")] = "cuda" if torch.cuda.is_available() else "cpu",
    min_block_size: Annotated[int, typer.Option(min=1, help="engine blocks smaller than this stay in PyTorch")] = 5,
    torch_executed_ops: Annotated[
        list[str] | None, typer.Option("--torch-executed-op", help="an op to keep in PyTorch (aten.softmax.int)")
    ] = None,
    timing_cache: Annotated[Path | None, typer.Option(help="tactic timing cache file (GPU)")] = None,
    engine_cache: Annotated[
        bool, typer.Option("--engine-cache/--no-engine-cache", help="reuse an engine built before (KILN_CACHE_DIR)")
    ] = False,
    cache_dir: Annotated[
        Path | None, typer.Option(help="engine cache directory (default $KILN_CACHE_DIR or ~/.cache/kiln/engines)")
    ] = None,
    debug: Annotated[bool, typer.Option(help="print the partition report and build progress")] = False,
) -> None:
    """Compile a model into a .kiln file."""
    import kiln
    from kiln.cli.model_source import load_model
    from kiln.cli.shapes import parse_input

    with kiln_errors():
        if calib is not None and not int8:
            raise UsageError("--calib is only used with --int8.")
        if int8 and not int8_available():
            raise UsageError("--int8 is not available in this build of Kiln (INT8 quantization, kiln.ptq, is not installed).")
        if int8 and calib is None:
            raise UsageError("--int8 needs --calib data.npy: calibration inputs to measure activation ranges on.")
        if not output.parent.exists():
            raise UsageError(f"the directory of --output {output} does not exist.")
        specs = [parse_input(text) for text in input]
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"--device {device}: CUDA is not available here; use --device cpu.")
        precisions = {torch.float32} | ({torch.float16} if fp16 else set()) | ({torch.bfloat16} if bf16 else set())
        options = {}
        if int8:
            precisions.add(torch.int8)
            options["calibrator"] = calibrator_from_file(calib, specs)
        if timing_cache is not None:
            options["timing_cache_path"] = str(timing_cache)
        if engine_cache:
            options["engine_cache"] = True
        if cache_dir is not None:
            options["cache_dir"] = str(cache_dir)
        quiet_export_warnings()
        with stage(f"loading {model}"):
            module = load_model(model).to(device)
        with stage("compiling: capture, lowering, partition, tactic choice", inner_bars=True):
            compiled = kiln.compile(
                module,
                inputs=specs,
                enabled_precisions=precisions,
                device=device,
                min_block_size=min_block_size,
                torch_executed_ops=torch_executed_ops or (),
                debug=debug,
                **options,
            )
        with stage(f"saving {output}"):
            kiln.save(compiled, output)
        out.print(compiled.report.summary())
        out.print(f"wrote {output} ({output.stat().st_size / 1024:.1f} KiB)")
        if compiled.report.fallback:
            err.print("[yellow]note:[/] some ops run in PyTorch; `kiln inspect` shows which and why.")
