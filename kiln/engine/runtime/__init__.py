from kiln.engine.runtime.cuda_graphs import CudaGraphRunner
from kiln.engine.runtime.executor import PlanExecutor

__all__ = ["CudaGraphRunner", "PlanExecutor"]
