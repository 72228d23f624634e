"""Values to give a network's symbols: the points of a ranged profile that the builder and runtime work at."""

from __future__ import annotations

from collections.abc import Mapping

from kiln.engine.ir.network import SymbolRange


def max_symbol_values(symbols: Mapping[str, SymbolRange]) -> dict[str, int]:
    """Memory is planned here: the one arena must hold every shape of the range."""
    return {name: sym.max for name, sym in symbols.items()}


def opt_symbol_values(symbols: Mapping[str, SymbolRange]) -> dict[str, int]:
    return {name: sym.opt for name, sym in symbols.items()}


def tuning_points(symbols: Mapping[str, SymbolRange]) -> list[dict[str, int]]:
    """Symbol values the tactics are timed at: opt first (its timings are the ones reported), then min and max."""
    points = [opt_symbol_values(symbols)]
    for pick in (lambda s: s.min, lambda s: s.max):
        point = {name: pick(sym) for name, sym in symbols.items()}
        if point not in points:
            points.append(point)
    return points
