"""AdamW parameter groups and the learning-rate schedule (a pure function of the step)."""

from __future__ import annotations

import math

from torch import nn

from .. import optim
from .config import DECAYS, TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed matrices and non-decayed vectors, at the optimizer's own lr and eps.

    Weight decay applies to parameters with two or more dimensions (linear and embedding matrices)
    that do not belong to a normalisation module; biases, norm gains/shifts, and other vector-shaped
    parameters are not decayed. Groups carry a ``names`` list for readable checkpoints. This is
    `deepscalelm.optim.param_groups` with the standard parametrisation, without per-group lr/eps.
    """
    groups = optim.param_groups(model, 0.0, "standard", weight_decay=weight_decay)
    return [{k: v for k, v in g.items() if k not in ("lr", "eps", "lr_scale")} for g in groups]


def schedule(step: int, *, lr: float, warmup_steps: int, max_steps: int, decay: str = "cosine",
             min_lr_ratio: float = 0.0, decay_lag: int = 0) -> float:
    """Learning rate at optimizer step ``step`` (1-based): the one warm-up + decay formula of the package.

    Linear warm-up ``lr * step / warmup_steps`` for ``step <= warmup_steps``; then, with
    ``t = clip((step - warmup_steps - decay_lag) / max(1, max_steps - warmup_steps), 0, 1)``,
    ``cosine``: ``floor + (lr - floor) * (1 + cos(pi t)) / 2``, ``linear``: ``floor + (lr - floor) * (1 - t)``,
    ``constant``: ``lr``, where ``floor = min_lr_ratio * lr``. Steps beyond ``max_steps`` keep the final
    value. ``decay_lag`` (default 0) starts the decay that many steps late: with 1, the peak is held for
    one extra step and the last step is one step short of the floor (the schedule of the reproduction
    studies in ``experiments/``, written for 0-based steps).
    """
    if decay not in DECAYS:
        raise ValueError(f"decay must be one of {', '.join(DECAYS)}, got {decay!r}")
    if not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
    if not isinstance(decay_lag, int) or decay_lag < 0:
        raise ValueError(f"decay_lag must be an integer >= 0, got {decay_lag!r}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio!r}")
    if warmup_steps and step <= warmup_steps:
        return lr * step / warmup_steps
    if decay == "constant":
        return lr
    span = max(1, max_steps - warmup_steps)
    t = min(1.0, max(0.0, (step - warmup_steps - decay_lag) / span))
    floor = lr * min_lr_ratio
    if decay == "linear":
        return floor + (lr - floor) * (1.0 - t)
    return floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step `step` (1-based) for a training config: `schedule` with its fields.

    Linear warm-up from lr/warmup to lr over ``warmup_steps`` steps, then ``cosine`` or ``linear``
    decay to ``min_lr_ratio * lr`` at ``max_steps`` (``constant``: stay at lr). Steps beyond
    ``max_steps`` keep the final value.
    """
    return schedule(step, lr=cfg.lr, warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps, decay=cfg.decay,
                    min_lr_ratio=cfg.min_lr_ratio)


__all__ = ["param_groups", "schedule", "lr_at"]
