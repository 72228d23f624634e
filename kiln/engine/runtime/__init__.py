from kiln.engine.runtime.executor import PlanExecutor

__all__ = ["PlanExecutor"]
