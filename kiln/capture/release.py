"""Let go of what torch.export keeps after a trace, so a compiled module dropped by its user frees its memory.

torch.export (proxy_tensor's _FAKE_TENSOR_ID_TO_PROXY_MAP_FOR_EXPORT, torch 2.11 to 2.13) keeps the nodes of the
last graph it traced in a module-level map until the next export clears it. Kiln builds its engines into that
traced graph module, so the last model compiled in a process (engine, weights, arenas, CUDA-graph pools) stayed
alive after the user dropped it: on the H100, compare.py saw nothing come back when a Kiln module was released.
The map is only read while an export is tracing, so emptying it after capture changes nothing else.
"""

from __future__ import annotations


def forget_export_trace() -> None:
    try:
        from torch.fx.experimental import proxy_tensor
    except ImportError:  # a torch without it keeps nothing there
        return
    kept = getattr(proxy_tensor, "_FAKE_TENSOR_ID_TO_PROXY_MAP_FOR_EXPORT", None)
    if isinstance(kept, dict):
        kept.clear()
