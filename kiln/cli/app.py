"""The `kiln` command line: compile, inspect, bench, serve, demo (and the benchmark scripts of a checkout).

Exit codes: 0 success; 1 Kiln could not do what was asked (the message says why: a model that
cannot be captured, a corrupt file, a bench that fails); 2 bad arguments (a missing file, a
malformed --input, an option this build does not have).
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from kiln.errors import KilnError

app = typer.Typer(
    name="kiln",
    help="Kiln: compile a PyTorch model into an inference engine, inspect it, benchmark it, serve it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

EXIT_FAILED = 1
EXIT_USAGE = 2


class UsageError(KilnError):
    """Arguments that cannot work (exit code 2), found after typer's own checks."""


@contextlib.contextmanager
def kiln_errors():
    """KilnErrors become one clear line on stderr and an exit code, not a traceback."""
    try:
        yield
    except UsageError as exc:
        err.print(f"[bold red]kiln: usage error:[/] {exc}", highlight=False)
        raise typer.Exit(EXIT_USAGE) from None
    except KilnError as exc:
        err.print(f"[bold red]kiln: error:[/] {type(exc).__name__}: {exc}", highlight=False)
        raise typer.Exit(EXIT_FAILED) from None


def quiet_export_warnings() -> None:
    # torch.export trips over its own pytree deprecation; it says nothing about the user's model.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)


ExistingFile = Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="a .kiln file")]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `kiln` console script and of `python -m kiln`; returns the exit code."""
    from kiln.cli import commands  # noqa: F401  (each command registers itself on `app`)

    try:
        app(args=argv if argv is not None else sys.argv[1:], prog_name="kiln", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_FAILED)
    return 0
