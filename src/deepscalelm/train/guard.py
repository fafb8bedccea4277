"""Stability guard: locate where a non-finite loss or gradient comes from.

When a step produces a NaN/Inf loss or gradient, the batch is run again (no gradient, RNG state
saved and restored) with forward hooks on every residual layer (``model.layers``, or
``model.encoder.layers`` / ``model.decoder.layers``); the report names the first layer, in execution
order, whose output holds a non-finite value, and the first non-finite parameter or gradient.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..errors import DSLMError


class NonFiniteError(DSLMError):
    """Training produced a non-finite loss or gradient (the run stopped; last checkpoint kept)."""


def residual_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every residual layer in forward order."""
    out: list[tuple[str, nn.Module]] = []
    for prefix in ("encoder.", "decoder."):
        layers = getattr(getattr(model, prefix[:-1], None), "layers", None)
        if isinstance(layers, nn.ModuleList):
            out.extend((f"{prefix}layers.{i}", m) for i, m in enumerate(layers))
    layers = getattr(model, "layers", None)
    if not out and isinstance(layers, nn.ModuleList):
        out.extend((f"layers.{i}", m) for i, m in enumerate(layers))
    return out


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


__all__ = ["NonFiniteError", "locate_nonfinite", "residual_layers"]
