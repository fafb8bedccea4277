"""The one place where a model's parameters get their values: `apply_scheme`.

Every model family inherits `SchemeModel`, whose ``reset_parameters()`` calls `apply_scheme` with the
model's scheme, so building on the meta device, ``to_empty(device=...)`` and ``reset_parameters()``
gives the same model as building directly. That also holds for a model sharded with FSDP2
(``fully_shard``) on the meta device and materialised per shard: each weight is drawn whole from the
global RNG (one parameter at a time) and every rank keeps only its own shard, so the sharded model
equals the single-process one bit for bit on CPU.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import ModelConfig
from ..theory.schemes import Scheme, get_scheme


def resolve_scheme(config: ModelConfig, scheme: "Scheme | str | None") -> Scheme:
    """A `Scheme` from a Scheme, a scheme name, or None (= ``config.scheme``)."""
    if scheme is None or isinstance(scheme, str):
        return get_scheme(config, scheme)
    if isinstance(scheme, Scheme):
        return scheme
    raise ValueError(f"scheme must be a Scheme, a scheme name or None, got {type(scheme).__name__}")


def weight_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters that a scheme initialises: everything except biases and LayerNorm parameters."""
    ln_params = {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()}
    return {n: p for n, p in model.named_parameters()
            if id(p) not in ln_params and not n.endswith(".bias")}


def _normal_(p: torch.Tensor, std: float) -> None:
    """Fill ``p`` with N(0, std^2) draws from the global torch RNG.

    A DTensor (an FSDP2-sharded parameter) gets the draws of the whole tensor, of which each rank
    keeps its own shard without communication, so the values do not depend on the sharding (the
    peak extra memory is one full parameter). Every rank must hold the same RNG state.
    """
    if torch.distributed.is_available():
        from torch.distributed.tensor import DTensor, distribute_tensor
    if torch.distributed.is_available() and isinstance(p, DTensor):
        full = torch.empty(p.shape, dtype=p.dtype, device=p.to_local().device).normal_(0.0, std)
        p.to_local().copy_(distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None).to_local())
    else:
        p.normal_(0.0, std)


@torch.no_grad()
def apply_scheme(model: nn.Module, scheme: "Scheme | str | None" = None) -> nn.Module:
    """(Re-)initialise ``model`` from ``scheme`` (default: ``model.scheme``); returns the model.

    * every weight ~ N(0, scheme.weight_var[name]) (drawn in ``named_parameters()`` order from the
      global torch RNG, so the same RNG state gives the same weights);
    * every bias 0, every LayerNorm gain 1 and shift 0;
    * every residual block's ``lam``, ``beta`` from ``scheme.merges[module name]``;
    * ``model.head_scale`` from ``scheme.scales["head_scale"]``.

    Also stores the scheme as ``model.scheme``. Raises ValueError if the model's weights and the
    scheme's names differ (a scheme built for another config).
    """
    config: ModelConfig = model.config
    scheme = resolve_scheme(config, scheme if scheme is not None else getattr(model, "scheme", None))
    weights = weight_parameters(model)
    if set(weights) != set(scheme.weight_var):
        missing = sorted(set(weights) - set(scheme.weight_var))[:5]
        extra = sorted(set(scheme.weight_var) - set(weights))[:5]
        raise ValueError(f"scheme {scheme.name!r} does not match the model's weights: model-only {missing}, "
                         f"scheme-only {extra} (was the scheme made for another config?)")
    modules = dict(model.named_modules())
    missing_merges = [m for m in scheme.merges if m not in modules]
    if missing_merges:
        raise ValueError(f"scheme {scheme.name!r} names merges the model lacks, e.g. {missing_merges[:3]}")
    for name, p in model.named_parameters():
        if name in weights:
            _normal_(p, math.sqrt(scheme.weight_var[name]))
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            if m.weight is not None:
                m.weight.fill_(1.0)
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, nn.Linear) and m.bias is not None:
            m.bias.zero_()
    for name, (lam, beta) in scheme.merges.items():
        modules[name].lam, modules[name].beta = float(lam), float(beta)
    model.head_scale = float(scheme.scales.get("head_scale", 1.0))
    model.scheme = scheme
    return model


class SchemeModel(nn.Module):
    """Mixin of every model family: ``config``, ``scheme``, init and activation checkpointing."""

    config: ModelConfig
    scheme: Scheme
    head_scale: float = 1.0

    def reset_parameters(self) -> None:
        """Initialise every parameter from ``self.scheme`` (see `apply_scheme`)."""
        apply_scheme(self, self.scheme)

    def set_activation_checkpointing(self, enabled: bool = True) -> "SchemeModel":
        """Recompute each layer in the backward pass (torch.utils.checkpoint, non-reentrant)."""
        for m in self.modules():
            if hasattr(m, "checkpointing"):
                m.checkpointing = bool(enabled)
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def stacks(self) -> list[tuple[str, nn.Module]]:
        """(record stack name, stack module) pairs: [("", self)] or encoder and decoder."""
        return [("", self)]


__all__ = ["apply_scheme", "resolve_scheme", "weight_parameters", "SchemeModel"]
