"""`kiln demo`: kiln/demo.py, with its own options."""

from __future__ import annotations

import typer

from kiln.cli.app import app

PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@app.command("demo", context_settings=PASS_THROUGH)
def demo_command(ctx: typer.Context) -> None:
    """Compile a small ResNet-style CNN, compare it with eager PyTorch, save and load it (--help for options)."""
    from kiln.demo import main as demo

    raise typer.Exit(demo(list(ctx.args)))
