from kiln.engine.builder.build import build_plan

__all__ = ["build_plan"]
