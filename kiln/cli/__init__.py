"""`kiln` on the command line (typer): `kiln --help` lists the commands."""

from kiln.cli.app import app, main

__all__ = ["app", "main"]
