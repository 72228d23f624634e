"""`kiln compare` and `kiln bench-dynamic`: the benchmark scripts of a source checkout (benchmarks/)."""

from __future__ import annotations

import os
import runpy
import sys

import typer

from kiln.cli.app import EXIT_USAGE, app, err
from kiln.cli.commands.demo import PASS_THROUGH


def run_script(name: str, argv: list[str]) -> int:
    # The benchmarks live beside the package in a source checkout, not inside the installed package.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    script = os.path.join(root, "benchmarks", name)
    if not os.path.exists(script):
        err.print(f"this runs benchmarks/{name} from a Kiln source checkout; {script} is not there.")
        return EXIT_USAGE
    if root not in sys.path:
        sys.path.insert(0, root)  # the script imports its neighbours as `benchmarks.*`
    namespace = runpy.run_path(script, run_name="kiln_bench")
    return namespace["main"](argv)


@app.command("compare", context_settings=PASS_THROUGH)
def compare_command(ctx: typer.Context) -> None:
    """benchmarks/compare.py: Kiln against eager, TorchScript and torch.compile (GPU; --help for options)."""
    raise typer.Exit(run_script("compare.py", list(ctx.args)))


@app.command("bench-dynamic", context_settings=PASS_THROUGH)
def bench_dynamic_command(ctx: typer.Context) -> None:
    """benchmarks/dynamic.py: ranged against static engines, and the torch.compile backend (--help for options)."""
    raise typer.Exit(run_script("dynamic.py", list(ctx.args)))
