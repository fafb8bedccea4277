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
from typing import Any, cast

import torch
from torch import nn

from ..config import ModelConfig
from ..theory.schemes import Scheme, get_scheme
from .components import NORM_MODULES


def resolve_scheme(config: ModelConfig, scheme: Scheme | str | None) -> Scheme:
    """A `Scheme` from a Scheme, a scheme name, or None (= ``config.scheme``)."""
    if scheme is None or isinstance(scheme, str):
        return get_scheme(config, scheme)
    if isinstance(scheme, Scheme):
        return scheme
    raise ValueError(f"scheme must be a Scheme, a scheme name or None, got {type(scheme).__name__}")


def weight_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters that a scheme initialises: everything except biases and norm (LayerNorm, RMSNorm,
    including the per-head q/k norms) parameters."""
    norm_params = {id(p) for m in model.modules() if isinstance(m, NORM_MODULES) for p in m.parameters()}
    return {n: p for n, p in model.named_parameters()
            if id(p) not in norm_params and not n.endswith(".bias")}


def _fc3_fallback(name: str) -> str | None:
    """``...ffn.fc1.weight`` for ``...ffn.fc3.weight``, else None."""
    suffix = ".fc3.weight"
    return name[: -len(suffix)] + ".fc1.weight" if name.endswith(suffix) else None


def _absent_in_model(name: str, config: ModelConfig) -> bool:
    """A scheme entry the model of ``config`` legitimately lacks: the learned position table when
    ``config.position`` is ``"rope"`` or ``"none"``."""
    return name.endswith("pos_emb.weight") and config.position != "learned"


def scheme_weight_variances(scheme: Scheme, config: ModelConfig, names: list[str]) -> dict[str, float]:
    """The init variance of every weight in ``names`` under ``scheme``: the one lookup of `apply_scheme`.

    * A name in ``scheme.weight_var`` gets that variance.
    * The up projection W3 of a gated FFN (``...ffn.fc3.weight``, SwiGLU/GeGLU) without an entry of its
      own gets the variance of the gate W1 (``...ffn.fc1.weight``) of the same block: both read the
      same normalised stream (fan-in d_model), so W3 = W1 gives the up projection the pre-activation
      variance the scheme chose for the gate. A scheme that derives W3's variance lists it and is used.
    * Scheme entries the model lacks are allowed only for the learned position table when
      ``config.position`` is not ``"learned"``.

    Raises ValueError naming up to five unmatched weights on either side (a scheme made for another config).
    """
    wv = scheme.weight_var
    out: dict[str, float] = {}
    for n in names:
        if n in wv:
            out[n] = wv[n]
        else:
            gate = _fc3_fallback(n)
            if gate is not None and gate in wv:
                out[n] = wv[gate]
    missing = [n for n in names if n not in out][:5]
    present = set(names)
    extra = [n for n in wv if n not in present and not _absent_in_model(n, config)][:5]
    if missing or extra:
        raise ValueError(f"scheme {scheme.name!r} does not match the model's weights: model-only {missing}, "
                         f"scheme-only {extra} (was the scheme made for another config?)")
    return out


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
def apply_scheme(model: nn.Module, scheme: Scheme | str | None = None) -> nn.Module:
    """(Re-)initialise ``model`` from ``scheme`` (default: ``model.scheme``); returns the model.

    * every weight ~ N(0, variance) with the variance from `scheme_weight_variances` (drawn in
      ``named_parameters()`` order from the global torch RNG, so the same RNG state gives the same
      weights);
    * every bias 0, every norm gain 1 and (LayerNorm) shift 0;
    * every residual block's ``lam``, ``beta`` from ``scheme.merges[module name]``;
    * ``model.head_scale`` from ``scheme.scales["head_scale"]``.

    Also stores the scheme as ``model.scheme``. Raises ValueError if the model's weights and the
    scheme's names differ (a scheme built for another config).
    """
    config = cast(ModelConfig, model.config)
    scheme = resolve_scheme(config, scheme if scheme is not None else getattr(model, "scheme", None))
    weights = weight_parameters(model)
    variances = scheme_weight_variances(scheme, config, list(weights))
    modules = dict(model.named_modules())
    missing_merges = [m for m in scheme.merges if m not in modules]
    if missing_merges:
        raise ValueError(f"scheme {scheme.name!r} names merges the model lacks, e.g. {missing_merges[:3]}")
    for name, p in model.named_parameters():
        if name in weights:
            _normal_(p, math.sqrt(variances[name]))
    for m in model.modules():
        if isinstance(m, NORM_MODULES):
            weight, bias = getattr(m, "weight", None), getattr(m, "bias", None)
            if weight is not None:
                weight.fill_(1.0)
            if bias is not None:
                bias.zero_()
        elif isinstance(m, nn.Linear) and m.bias is not None:
            m.bias.zero_()
    for name, (lam, beta) in scheme.merges.items():
        block: Any = modules[name]  # plain float attributes, not parameters or submodules
        block.lam, block.beta = float(lam), float(beta)
    target: Any = model
    target.head_scale = float(scheme.scales.get("head_scale", 1.0))
    target.scheme = scheme
    return model


class SchemeModel(nn.Module):
    """Mixin of every model family: ``config``, ``scheme``, init and activation checkpointing."""

    config: ModelConfig
    scheme: Scheme
    head_scale: float = 1.0

    def reset_parameters(self) -> None:
        """Initialise every parameter from ``self.scheme`` (see `apply_scheme`)."""
        apply_scheme(self, self.scheme)

    def set_activation_checkpointing(self, enabled: bool = True) -> SchemeModel:
        """Recompute each layer in the backward pass (torch.utils.checkpoint, non-reentrant)."""
        for m in self.modules():
            if hasattr(m, "checkpointing"):
                layer: Any = m
                layer.checkpointing = bool(enabled)
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def stacks(self) -> list[tuple[str, nn.Module]]:
        """(record stack name, stack module) pairs: [("", self)] or encoder and decoder."""
        return [("", self)]


__all__ = ["apply_scheme", "resolve_scheme", "weight_parameters", "scheme_weight_variances", "SchemeModel"]
