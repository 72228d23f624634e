"""Progress display for long steps, on stderr so that stdout stays parseable."""

from __future__ import annotations

import contextlib
import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from kiln.cli.app import err


@contextlib.contextmanager
def stage(description: str, inner_bars: bool = False):
    """A spinner with elapsed time while one step of unknown length runs, then a line saying it took how long.

    `inner_bars`: the step draws its own tqdm bars (the builder's tactic timing and kernel compiling,
    calibration). rich's live display would swallow them (it holds stderr's writes back until a
    newline, and a tqdm bar redraws its line with carriage returns), so the step gets a plain
    starting line instead of a spinner, and the terminal to itself.
    """
    started = time.perf_counter()
    if inner_bars:
        err.print(f"[cyan]...[/] {description}", highlight=False)
        yield
    else:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err, transient=True) as progress:
            progress.add_task(description, total=None)
            yield
    err.print(f"[green]done[/] {description} ({time.perf_counter() - started:.1f} s)", highlight=False)


@contextlib.contextmanager
def counted(description: str, total: int):
    """A bar for a step of `total` known parts; yields the function that advances it by one."""
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err, transient=True
    ) as progress:
        task = progress.add_task(description, total=total)
        yield lambda: progress.advance(task)
