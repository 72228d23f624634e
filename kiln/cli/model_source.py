"""Where `kiln compile` gets its model: a Python factory `file.py:function` or a saved ExportedProgram `.pt2`."""

from __future__ import annotations

import importlib.util
import os
import sys

import torch

from kiln.cli.app import UsageError


class ModelSourceError(UsageError):
    """The model argument of `kiln compile` does not name a loadable model."""


def load_model(source: str) -> torch.nn.Module:
    """`path/to/file.py:make_model` calls make_model() (no arguments); `model.pt2` loads an ExportedProgram."""
    if source.endswith(".pt2"):
        return _load_exported(source)
    path, sep, name = source.rpartition(":")
    if not sep or not path.endswith(".py") or not name.isidentifier():
        raise ModelSourceError(
            f"model {source!r} is neither FILE.py:FUNCTION (a function that returns an nn.Module) nor a .pt2 file "
            "written by torch.export.save. Example: kiln compile models.py:make_model --input 1x3x224x224 -o model.kiln"
        )
    if not os.path.isfile(path):
        raise ModelSourceError(f"model file {path!r} does not exist.")
    module_name = "kiln_user_model_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(module_name, os.path.abspath(path))
    user = importlib.util.module_from_spec(spec)
    # The factory's module may import its neighbours, as it would when run as a script.
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    try:
        spec.loader.exec_module(user)
    except Exception as exc:  # any error in the user's file: say where it came from
        raise ModelSourceError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        sys.path.pop(0)
    factory = getattr(user, name, None)
    if not callable(factory):
        defined = sorted(n for n, v in vars(user).items() if callable(v) and not n.startswith("_"))
        raise ModelSourceError(f"{path} has no function {name!r}; it defines {defined}.")
    model = factory()
    if not isinstance(model, torch.nn.Module):
        raise ModelSourceError(f"{path}:{name}() returned a {type(model).__name__}; it must return a torch.nn.Module.")
    return model.eval()


def _load_exported(path: str) -> torch.nn.Module:
    if not os.path.isfile(path):
        raise ModelSourceError(f"exported program {path!r} does not exist.")
    try:
        program = torch.export.load(path)
    except Exception as exc:  # torch.export.load raises zip, pickle-free schema and version errors
        raise ModelSourceError(f"{path} is not an ExportedProgram written by torch.export.save ({type(exc).__name__}: {exc}).") from exc
    return program.module()
