"""AdamW parameter groups and the learning-rate schedule (a pure function of the step)."""

from __future__ import annotations

import math

from torch import nn

from .config import TrainConfig

_NORM_TYPES = (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed matrices and non-decayed vectors.

    Weight decay applies to parameters with two or more dimensions (linear and embedding matrices)
    that do not belong to a normalisation module; biases, LayerNorm gains/shifts, and other
    vector-shaped parameters (e.g. a ViT class token of shape [1, d] counts as a matrix, a bias as
    a vector) are not decayed. Groups carry a ``names`` list for readable checkpoints.
    """
    norm_params = {id(p) for m in model.modules() if isinstance(m, _NORM_TYPES) for p in m.parameters(recurse=False)}
    decay, no_decay, dn, nn_ = [], [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim >= 2 and id(p) not in norm_params:
            decay.append(p)
            dn.append(name)
        else:
            no_decay.append(p)
            nn_.append(name)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step `step` (1-based).

    Linear warm-up from lr/warmup to lr over ``warmup_steps`` steps, then ``cosine`` or ``linear``
    decay to ``min_lr_ratio * lr`` at ``max_steps`` (``constant``: stay at lr). Steps beyond
    ``max_steps`` keep the final value.
    """
    if cfg.warmup_steps and step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    if cfg.decay == "constant":
        return cfg.lr
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    t = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    if cfg.decay == "linear":
        return floor + (cfg.lr - floor) * (1.0 - t)
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


__all__ = ["param_groups", "lr_at"]
