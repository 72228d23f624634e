"""Turn whatever torch.export raised into a CaptureError that says why, where, and what to do."""

from __future__ import annotations

import os
import traceback

import torch

from kiln.errors import CaptureError

_TORCH_DIR = os.path.dirname(torch.__file__)
_KILN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_GENERIC_ADVICE = (
    "What to do: make forward() traceable (no data-dependent Python control flow on tensor values, "
    "use torch.cond or move it outside), or use torch.compile(model, backend='kiln'), which splits "
    "the model at the parts it cannot capture and runs those in Python."
)
_DATA_DEPENDENT = (
    "forward() uses the value inside a tensor in Python (an `if`/`while` on a tensor, `.item()`, `int(t)`, "
    "`bool(t)`): torch.export records one fixed graph and cannot follow a branch chosen by the data."
)
_DATA_DEPENDENT_ADVICE = (
    "What to do: compute both branches and pick with torch.where, use torch.cond(pred, true_fn, false_fn, "
    "(x,)), move the decision outside the model, or use torch.compile(model, backend='kiln'), which runs "
    "the parts it cannot capture in Python."
)


# Export failures with a cause Kiln can name: (text in torch's message, what it means and what to do).
_KNOWN_CAUSES = [
    (
        "num_mutated_inp_runtime_indices",
        "forward() changes the shape or storage of an input in place (resize_, set_, or an in-place op on a "
        "resized view); torch.export cannot capture a change to an input's metadata, and an engine returns new tensors.",
        "What to do: work on a new tensor (y = x.reshape(...), or y = x.clone() and resize that), not on the input itself.",
    ),
    (
        "alias annotation",
        "forward() calls an operator whose output aliases its input and which has no functional form in torch.export "
        "(a custom op declared with Tensor(a) -> Tensor(a), or a torch.ops.prims view Kiln does not rewrite; "
        "kiln/capture/aliasing_prims.py lists those it does).",
        "What to do: call the aten view op instead (view, expand, permute, ...), or register the custom op with a "
        "functional (non-aliasing) output.",
    ),
]


def capture_error(module: torch.nn.Module, exc: BaseException) -> CaptureError:
    name = type(module).__name__
    where = _user_frame(exc)
    at = f" at {where}" if where else ""
    text = " ".join(str(e) for e in _chain(exc))
    for needle, cause, advice in _KNOWN_CAUSES:
        if needle in text:
            return CaptureError(
                f"torch.export could not capture {name}{at}: {cause}\ntorch said: {type(exc).__name__}: {_first_lines(exc, 2)}\n{advice}"
            )
    if _is_data_dependent(exc):
        return CaptureError(
            f"torch.export could not capture {name}{at}: {_DATA_DEPENDENT}\n"
            f"torch said: {type(exc).__name__}: {_first_lines(exc, 2)}\n{_DATA_DEPENDENT_ADVICE}"
        )
    return CaptureError(f"torch.export could not capture {name}{at}: {type(exc).__name__}: {_first_lines(exc)}\n{_GENERIC_ADVICE}")


def _is_data_dependent(exc: BaseException) -> bool:
    kinds = {type(e).__name__ for e in _chain(exc)}
    text = " ".join(str(e) for e in _chain(exc))
    return "GuardOnDataDependentSymNode" in kinds or "data-dependent" in text or "data dependent" in text


def _user_frame(exc: BaseException) -> str | None:
    """The innermost traceback line in the user's own code (not torch's, not Kiln's)."""
    found = None
    for e in _chain(exc):
        for frame in traceback.extract_tb(e.__traceback__):
            path = os.path.abspath(frame.filename)
            if path.startswith((_TORCH_DIR, _KILN_DIR)) or frame.filename.startswith("<"):
                continue
            found = f"{frame.filename}:{frame.lineno} ({(frame.line or '').strip()})"
    return found


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _first_lines(exc: BaseException, n: int = 6) -> str:
    text = str(exc).strip().splitlines()
    return "\n".join(text[:n]) + ("\n..." if len(text) > n else "")
