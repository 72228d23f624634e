"""`kiln inspect model.kiln [--html report.html]`: what is in a .kiln file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kiln.cli.app import ExistingFile, UsageError, app, kiln_errors, out


@app.command("inspect")
def inspect_command(
    path: ExistingFile,
    html: Annotated[Path | None, typer.Option(help="also write the engine explorer, one self-contained HTML file")] = None,
    device: Annotated[str | None, typer.Option(help="load onto this device (default: the one it was compiled for)")] = None,
) -> None:
    """Summarise a .kiln file: inputs, engine blocks, tactics, memory, and the partition report."""
    import kiln
    from kiln.explorer.model import engine_summary

    with kiln_errors():
        if html is not None and not html.parent.exists():
            raise UsageError(f"the directory of --html {html} does not exist.")
        compiled = kiln.load(path, device=device)
        out.print(f"[bold]{path}[/] ({path.stat().st_size / 1024:.1f} KiB), device {compiled.device}")
        # A SizeVariants file holds one compiled module per part of the input range: each is summarised.
        variants = list(getattr(compiled, "variants", [compiled]))
        for index, variant in enumerate(variants):
            if len(variants) > 1:
                out.print(f"[bold]size variant {index}[/]: " + ", ".join(s.describe() for s in variant.input_specs))
            for line in engine_summary(variant).lines():
                out.print(line)
            out.print(variant.report.table())
        if html is not None:
            from kiln.explorer import write_html

            main = variants[-1]  # of a SizeVariants, the engine for the range from 2
            write_html(main, html, title=path.name)
            out.print(f"wrote {html}" + (" (the main size variant)" if len(variants) > 1 else ""))
