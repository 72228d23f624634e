"""One module per command; importing them registers them on kiln.cli.app.app."""

from kiln.cli.commands import bench_file, compile_model, demo, inspect_file, scripts, serve_file  # noqa: F401
