"""Stability guard: locate where a non-finite loss or gradient comes from.

When a step produces a NaN/Inf loss or gradient, the batch is run again (no gradient, RNG state
saved and restored) with forward hooks on every residual layer (the layers of the structure
registry, `deepscalelm.structure.stacks_of`: ``layers.i``, or ``encoder.layers.i`` then
``decoder.layers.i``, or a registered model's blocks); the report names the first layer, in
execution order, whose output holds a non-finite value, and the first non-finite parameter or gradient.

Every checkpoint also gets a divergence check (`divergence_check`), recorded in its ``state.json``;
the newest checkpoint that passed is never pruned and is the one a stopped run points to.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..errors import DSLMError
from ..structure import stacks_of


class NonFiniteError(DSLMError):
    """Training produced a non-finite loss or gradient (the run stopped; last checkpoint kept)."""


def residual_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every residual layer in forward order, from the structure registry.

    Empty for a model the registry does not know (the guard then only checks parameters and the
    output; FSDP shards only the root).
    """
    try:
        stacks = stacks_of(model)
    except DSLMError:
        return []
    mods = dict(model.named_modules())
    return [(layer.name, mods[layer.name]) for res in stacks for layer in res.layers]


def _nonfinite(x: object) -> bool:
    if isinstance(x, torch.Tensor):
        return x.is_floating_point() and not bool(torch.isfinite(x).all())
    if isinstance(x, (tuple, list)):
        return any(_nonfinite(t) for t in x)
    return False


def locate_nonfinite(model: nn.Module, forward: Callable[[], object]) -> str:
    """Describe where non-finite values appear when `forward()` runs `model` once more."""
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            return f"parameter {name} is already non-finite"
    seen: list[str] = []
    hooks = []
    for name, layer in residual_layers(model):
        def hook(_m: nn.Module, _inp: object, out: object, name: str = name) -> None:
            if not seen and _nonfinite(out):
                seen.append(name)
        hooks.append(layer.register_forward_hook(hook))
    cpu_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        with torch.no_grad():
            out = forward()
    finally:
        for h in hooks:
            h.remove()
        torch.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
    if seen:
        return f"first non-finite activation: output of {seen[0]}"
    if _nonfinite(out):
        return "all residual layer outputs are finite; the output head produced non-finite values"
    for name, p in model.named_parameters():
        if p.grad is not None and not torch.isfinite(p.grad).all():
            return f"forward pass finite; first non-finite gradient in {name} (overflow in backward)"
    return "forward pass finite on re-run (the non-finite value came from the loss or backward pass)"


#: a checkpoint fails the divergence check when its loss exceeds this multiple of the reference loss
DIVERGENCE_FACTOR = 2.0


def reference_loss(first_loss: float | None, n_outputs: int) -> float:
    """The loss of an untrained model: max(loss of the run's first step, ln(n_outputs)) in nats."""
    base = math.log(n_outputs)
    return max(base, first_loss) if first_loss is not None and math.isfinite(first_loss) else base


def divergence_check(train_losses: Sequence[float], reference: float, *, val_loss: float | None = None,
                     weights_finite: bool = True, factor: float = DIVERGENCE_FACTOR) -> dict[str, object]:
    """Whether a checkpoint looks healthy: ``{"ok", "reason", "reference", "train_loss", "val_loss"}``.

    It passes when the weights are finite, at least one training loss (nats per token) was finite
    since the previous checkpoint, their mean is at most ``factor * reference`` and so is
    `val_loss` when an evaluation ran at the same step. `reference` is the loss of an untrained
    model (`reference_loss`): a model that predicts worse than twice that has diverged.
    """
    finite = [x for x in train_losses if math.isfinite(x)]
    mean = sum(finite) / len(finite) if finite else None
    limit = factor * reference
    if not weights_finite:
        ok, reason = False, "the weights hold non-finite values"
    elif mean is None:
        ok, reason = False, "no finite training loss since the previous checkpoint"
    elif mean > limit:
        ok, reason = False, f"train loss {mean:.4g} > {factor:g} x reference {reference:.4g}"
    elif val_loss is not None and not (val_loss <= limit):
        ok, reason = False, f"val_loss {val_loss:.4g} > {factor:g} x reference {reference:.4g}"
    else:
        ok, reason = True, f"train loss {mean:.4g} <= {factor:g} x reference {reference:.4g}"
    val = val_loss if val_loss is not None and math.isfinite(val_loss) else None  # state.json stays strict JSON
    return {"ok": ok, "reason": reason, "reference": reference, "train_loss": mean, "val_loss": val}


__all__ = ["NonFiniteError", "locate_nonfinite", "residual_layers", "divergence_check", "reference_loss",
           "DIVERGENCE_FACTOR"]
