"""Where a build's seconds go: each pipeline stage reports its time to the clock of the compile running.

kiln.compile (and compile_captured, which torch.compile's backend enters) runs under a clock; a stage
wraps its work in `stage(name)`, wherever it lives (capture in api.py, precompile and timing in the
builder), without the clock being passed down. A stage run twice (one per engine block) adds up;
a stage inside another counts only for itself (the outer one's seconds exclude it). Outside a
compile nothing is recorded. The report keeps the seconds by stage, in the order first run, with
"other" for what no stage claimed (settings, the module's own assembly) and "total".
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import time
from collections.abc import Callable, Iterator

_now = time.perf_counter  # a name of its own, so a test can drive the clock
_CLOCK: contextvars.ContextVar[BuildClock | None] = contextvars.ContextVar("kiln_build_clock", default=None)


class BuildClock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.started = _now()
        self.open: list[list[float]] = []  # per stage running: [seconds its inner stages took]

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def breakdown(self) -> dict[str, float]:
        """Seconds by stage, then "other" and "total", rounded to the millisecond."""
        total = _now() - self.started
        out = {name: round(s, 3) for name, s in self.seconds.items()}
        out["other"] = round(max(0.0, total - sum(self.seconds.values())), 3)
        out["total"] = round(total, 3)
        return out


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Count the enclosed block's wall time as stage `name` of the compile running in this context, if any."""
    clock = _CLOCK.get()
    if clock is None:
        yield
        return
    start = _now()
    clock.open.append([0.0])
    try:
        yield
    finally:
        elapsed = _now() - start
        (inner,) = clock.open.pop()
        clock.add(name, elapsed - inner)
        if clock.open:
            clock.open[-1][0] += elapsed


def timed_build(fn: Callable) -> Callable:
    """Run `fn` (a compile entry point) under a clock; the outermost call writes the breakdown into its result's report.

    A nested call (compile calling compile_captured, or itself per size variant) adds to the outer clock."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if _CLOCK.get() is not None:
            return fn(*args, **kwargs)
        clock = BuildClock()
        token = _CLOCK.set(clock)
        try:
            result = fn(*args, **kwargs)
        finally:
            _CLOCK.reset(token)
        report = getattr(result, "report", result)
        if hasattr(report, "build_seconds"):
            report.build_seconds = clock.breakdown()
        return result

    return wrapper


def build_time_line(seconds: dict[str, float]) -> str:
    """One line for the report: "Build 4.21 s: capture 2.90, lowering 0.10, ... (seconds)"."""
    parts = ", ".join(f"{name} {s:.2f}" for name, s in seconds.items() if name != "total")
    return f"Build {seconds.get('total', sum(seconds.values())):.2f} s: {parts} (seconds)"
