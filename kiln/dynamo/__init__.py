"""Kiln as a torch.compile backend, and kiln.explain: where dynamo broke the graph and what Kiln made of each piece."""

from kiln.dynamo.backend import GraphRecord, KilnBackend, kiln_backend, option_names
from kiln.dynamo.explain import Explanation, explain

__all__ = ["kiln_backend", "KilnBackend", "GraphRecord", "option_names", "explain", "Explanation"]
