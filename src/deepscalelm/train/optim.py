"""AdamW parameter groups and the learning-rate schedule (a pure function of the step)."""

from __future__ import annotations

import math

from torch import nn

from .. import optim
from .config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed matrices and non-decayed vectors, at the optimizer's own lr and eps.

    Weight decay applies to parameters with two or more dimensions (linear and embedding matrices)
    that do not belong to a normalisation module; biases, norm gains/shifts, and other vector-shaped
    parameters are not decayed. Groups carry a ``names`` list for readable checkpoints. This is
    `deepscalelm.optim.param_groups` with the standard parametrisation, without per-group lr/eps.
    """
    groups = optim.param_groups(model, 0.0, "standard", weight_decay=weight_decay)
    return [{k: v for k, v in g.items() if k not in ("lr", "eps", "lr_scale")} for g in groups]


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
