"""Magnitude pruning of a model's GEMM weights to the 2:4 pattern, and keeping it while fine-tuning.

NVIDIA's ASP workflow: prune a trained dense model to 2:4 by magnitude, then fine-tune with
the masks held fixed so accuracy recovers. `prune_2to4` does the first step in place;
`keep_masks` holds the masks during the second (a forward pre-hook zeroes the pruned
weights before every forward, and a gradient hook zeroes their gradients, so optimizer
state such as Adam's moments does not accumulate for weights that will be zeroed again).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

import torch
from torch import nn

from kiln.errors import KilnError
from kiln.sparsity.pattern import mask_2to4


def is_prunable(module: nn.Module) -> bool:
    """A linear layer, or a pointwise (1x1, ungrouped, untransposed) 2-D conv: the layers that are GEMMs."""
    if isinstance(module, nn.Linear):
        return True
    return (
        isinstance(module, nn.Conv2d)
        and tuple(module.kernel_size) == (1, 1)
        and module.groups == 1
        and not getattr(module, "transposed", False)
    )


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(name == p or fnmatch.fnmatchcase(name, p) or name.startswith(p + ".") for p in patterns)


def prunable_layers(model: nn.Module, layers: Iterable[str] | None = None, exclude: Iterable[str] = ()) -> dict[str, nn.Module]:
    """The modules `prune_2to4` would prune, by qualified name."""
    exclude = tuple(exclude)
    wanted = None if layers is None else tuple(layers)
    found = {name: m for name, m in model.named_modules() if is_prunable(m)}
    if wanted is not None:
        missing = [p for p in wanted if not any(_matches(n, [p]) for n in found)]
        if missing:
            raise KilnError(
                f"prune_2to4: layers={missing} name no linear or 1x1 conv of the model; "
                f"the prunable layers are {sorted(found)[:20]}{' ...' if len(found) > 20 else ''}."
            )
        found = {n: m for n, m in found.items() if _matches(n, wanted)}
    return {n: m for n, m in found.items() if not _matches(n, exclude)}


@torch.no_grad()
def prune_2to4(model: nn.Module, *, layers: Iterable[str] | None = None, exclude: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """Zero all but the two largest-magnitude weights of every group of four input features, in place.

    Applies to every nn.Linear and pointwise nn.Conv2d, or only those named in `layers`
    (qualified names as in `model.named_modules()`, glob patterns allowed, a name also covers
    its children), minus those in `exclude`. Returns {layer name: boolean mask of its weight}.
    """
    masks = {}
    for name, module in prunable_layers(model, layers, exclude).items():
        mask = mask_2to4(module.weight)
        module.weight.mul_(mask)
        masks[name] = mask
    return masks


class MaskKeeper:
    """Hooks that keep each pruned layer's weight at its mask while the model trains; `remove()` ends it.

    Also a context manager: `with keep_masks(model, masks): train(...)`. The masks are applied
    once more on removal, so the weights are exactly 2:4 afterwards whatever the last
    optimizer step did.
    """

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor]):
        modules = dict(model.named_modules())
        unknown = [n for n in masks if n not in modules]
        if unknown:
            raise KilnError(f"keep_masks: {unknown} are not modules of this model (pass the dict prune_2to4 returned).")
        self._targets = []
        self._handles = []
        for name, mask in masks.items():
            module = modules[name]
            if tuple(mask.shape) != tuple(module.weight.shape):
                raise KilnError(f"keep_masks: mask for {name} has shape {tuple(mask.shape)}, its weight {tuple(module.weight.shape)}.")
            mask = mask.to(module.weight.device, torch.bool)
            self._targets.append((module, mask))
            self._handles.append(module.register_forward_pre_hook(self._apply_hook(mask)))
            if module.weight.requires_grad:
                self._handles.append(module.weight.register_hook(lambda grad, m=mask: grad * m))
        self.apply()

    @staticmethod
    def _apply_hook(mask: torch.Tensor):
        def hook(module, args):
            with torch.no_grad():
                module.weight.mul_(mask)

        return hook

    @torch.no_grad()
    def apply(self) -> None:
        for module, mask in self._targets:
            module.weight.mul_(mask)

    def remove(self) -> None:
        self.apply()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> MaskKeeper:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def keep_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> MaskKeeper:
    """Keep the masks `prune_2to4` returned applied through fine-tuning, until `.remove()` or the `with` block ends."""
    return MaskKeeper(model, masks)
