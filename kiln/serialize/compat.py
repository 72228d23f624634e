"""What a .kiln file was built with, and fitting its plans to where it is loaded.

The manifest's "built_on" records the device type, GPU name and compute capability, and the
Kiln, PyTorch and Triton versions of the build. On load:
- a file whose formats this Kiln cannot read (another major Kiln or PyTorch version, another
  plan format) is refused with IncompatibleFileError, saying what wrote it and what to do;
- a plan whose tactics cannot all run here (another device type, a tactic this Kiln lacks), or
  that was timed on another GPU model, gets its tactics re-chosen or, with retime=True,
  re-timed here (builder/retarget.py), with one KilnWarning saying why and how to get the
  speed back.
"""

from __future__ import annotations

import warnings

import torch

from kiln.engine.builder.retarget import retarget_plan, saved_tactics_apply
from kiln.engine.plan import PLAN_FORMAT, Plan
from kiln.errors import IncompatibleFileError, KilnWarning


def kiln_version() -> str:
    from kiln import __version__

    return __version__


def triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def environment(device: torch.device) -> dict:
    """The facts about this machine that decide which tactics a plan built on it may use, and how fast they are."""
    device = torch.device(device)
    env = {"device_type": device.type, "kiln": kiln_version(), "torch": torch.__version__, "triton": triton_version()}
    if device.type == "cuda" and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(device)
        env["capability"] = list(torch.cuda.get_device_capability(device))
    return env


def describe(env: dict) -> str:
    if env.get("gpu"):
        major, minor = env.get("capability") or ("?", "?")
        return f"{env['gpu']} (sm_{major}{minor})"
    return str(env.get("device_type", "an unknown device"))


def _major(version) -> int | None:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return None


def versions_note(manifest: dict) -> str:
    """Which Kiln and PyTorch wrote the file against which read it, when they differ; else ''."""
    built = built_on(manifest)
    theirs = (built.get("kiln"), built.get("torch"))
    ours = (kiln_version(), torch.__version__)
    if theirs == ours or theirs == (None, None):
        return ""
    return (
        f" The file was written by Kiln {theirs[0]} with PyTorch {theirs[1]}; this is Kiln {ours[0]} with PyTorch "
        f"{ours[1]}: compile the model again with this version, or load the file where it was made."
    )


def built_on(manifest: dict) -> dict:
    """The manifest's build facts; files from before "built_on" recorded only the two versions."""
    built = manifest.get("built_on")
    if isinstance(built, dict):
        return built
    return {"kiln": manifest.get("kiln_version"), "torch": manifest.get("torch_version")}


def check_versions(manifest: dict) -> None:
    """Refuse a file whose Kiln or PyTorch major version differs: its plans and ops are not this version's to read."""
    built = built_on(manifest)
    for what, theirs, ours in (("Kiln", built.get("kiln"), kiln_version()), ("PyTorch", built.get("torch"), torch.__version__)):
        if theirs is not None and _major(theirs) != _major(ours):
            raise IncompatibleFileError(
                f"it was written by {what} {theirs}, and this is {what} {ours}, another major version whose format "
                f"this Kiln does not read. Compile the model again here, or load the file with {what} {theirs}."
            )


def check_plan_format(plan_json: dict, block: str, manifest: dict) -> None:
    found = plan_json.get("format", PLAN_FORMAT)
    if found != PLAN_FORMAT:
        raise IncompatibleFileError(
            f"engine {block} has plan format {found!r}, and this Kiln reads format {PLAN_FORMAT}." + versions_note(manifest)
        )


class Fitter:
    """Fits each plan of one file to the device it is loaded on, and warns once for the file."""

    def __init__(self, manifest: dict, device: torch.device, retime: bool, source: str):
        self.built = built_on(manifest)
        self.here = environment(device)
        self.device = device
        self.retime = retime
        self.source = source
        self.replaced: dict[str, tuple[str, str]] = {}
        self.from_cpu = False
        self.layers = 0
        self.timed_elsewhere = (
            device.type == "cuda"
            and self.built.get("gpu") is not None
            and (self.built.get("gpu"), self.built.get("capability")) != (self.here.get("gpu"), self.here.get("capability"))
        )

    def fit(self, plan: Plan, block: str) -> Plan:
        self.layers += len(plan.steps)
        moved = torch.device(plan.device).type != self.device.type
        self.from_cpu = self.from_cpu or (moved and self.device.type == "cuda")
        if self.retime or moved or self.timed_elsewhere or not saved_tactics_apply(plan, self.device):
            result = retarget_plan(plan, self.device, retime=self.retime, where=block)
            self.replaced.update({f"{block}.{name}": change for name, change in result.replaced.items()})
            return result.plan
        plan.device = str(self.device)
        return plan

    def warn(self) -> None:
        if self.retime:
            return  # asked for: the tactics were timed here
        built, here = describe(self.built), describe(self.here)
        if self.replaced:
            shown = ", ".join(f"{layer}: {old} -> {new}" for layer, (old, new) in list(self.replaced.items())[:3])
            more = f" and {len(self.replaced) - 3} more" if len(self.replaced) > 3 else ""
            how = (
                "Load it with kiln.load(..., retime=True) to time the tactics on this GPU, or compile the model again here."
                if self.device.type == "cuda"
                else f"Compile the model again for {self.device} to plan it for this device."
            )
            where = f"{self.source} was built on {built} and is loaded on {here}" if built != here else self.source
            warnings.warn(
                f"{where}: {len(self.replaced)} of {self.layers} layers use a tactic that cannot run on {here} or that this "
                f"Kiln does not have, and got another ({shown}{more}); the reference tactic stands in where "
                f"nothing faster is known, so it may run slower than where it was built. {how}",
                KilnWarning,
                stacklevel=3,
            )
        elif self.from_cpu:
            warnings.warn(
                f"{self.source} was built for the CPU, where every layer takes the reference tactic, and is loaded on "
                f"{here}. Load it with kiln.load(..., retime=True) to choose fast tactics by timing them on this GPU, or "
                "compile the model again here.",
                KilnWarning,
                stacklevel=3,
            )
        elif self.timed_elsewhere:
            warnings.warn(
                f"{self.source} was built on {built} and is loaded on {here}: its tactics run here, but were chosen by "
                "timing on the other GPU and may not be the fastest here. Load it with kiln.load(..., retime=True) to time "
                "them on this GPU, or compile the model again here.",
                KilnWarning,
                stacklevel=3,
            )
