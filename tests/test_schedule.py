"""One learning-rate schedule: `deepscalelm.train.optim.schedule` against the formulas it replaced.

The three copies it replaced (the training loop's `lr_at`, the studies' `train_lm`/`fit`, fine-tuning's
`_lr_at`) are written out here as they were, so that a change of the shared formula shows up as a
difference in values. The training loop's values must be bit-identical; the studies' and fine-tuning's
were algebraically the same but rounded in another order: they agree to a few ulp in double precision
(relative 1e-13 at the end of fine-tuning's linear decay) and exactly once rounded to float32 (the
precision of the parameters the rate multiplies).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from deepscalelm.config import ModelConfig
from deepscalelm.finetune.api import _lr_at as finetune_lr_at
from deepscalelm.models import build_model
from deepscalelm.train.config import TrainConfig
from deepscalelm.train.optim import lr_at, param_groups, schedule

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def old_loop(step: int, lr: float, warmup: int, max_steps: int, decay: str, m: float) -> float:
    if warmup and step <= warmup:
        return lr * step / warmup
    if decay == "constant":
        return lr
    t = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    floor = lr * m
    if decay == "linear":
        return floor + (lr - floor) * (1.0 - t)
    return floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def old_studies(s: int, lr: float, warmup: int, steps: int, m: float) -> float:  # 0-based s
    if s < warmup:
        return lr * (s + 1) / warmup
    t = (s - warmup) / max(1, steps - warmup)
    return lr * (m + (1 - m) * 0.5 * (1 + math.cos(math.pi * t)))


def old_finetune(step: int, total: int, warmup: int, lr: float) -> float:
    if warmup and step <= warmup:
        return lr * step / warmup
    return lr * max(0.0, (total - step) / max(1, total - warmup))


STEPS = [0, 1, 2, 5, 9, 10, 11, 12, 50, 99, 100, 101, 150, 199, 200, 201, 500]


@pytest.mark.parametrize("decay", ["cosine", "linear", "constant"])
@pytest.mark.parametrize("warmup,max_steps", [(0, 200), (10, 200), (30, 100), (200, 200)])
def test_loop_schedule_is_bit_identical(decay: str, warmup: int, max_steps: int) -> None:
    cfg = TrainConfig(lr=3e-3, warmup_steps=warmup, max_steps=max_steps, decay=decay, min_lr_ratio=0.1)
    for s in STEPS:
        assert lr_at(s, cfg) == old_loop(s, 3e-3, warmup, max_steps, decay, 0.1), s


@pytest.mark.parametrize("lr", [1e-3, 2e-3, 1e-2, 3e-1])
@pytest.mark.parametrize("warmup,steps,m", [(10, 200, 0.1), (5, 40, 0.1), (0, 100, 0.0), (12, 120, 0.25)])
def test_studies_schedule_matches_old_formula(lr: float, warmup: int, steps: int, m: float) -> None:
    for s in range(steps):  # the studies' loops run s = 0 .. steps - 1 (the old formula is unclamped beyond)
        new = schedule(s + 1, lr=lr, warmup_steps=warmup, max_steps=steps, min_lr_ratio=m, decay_lag=1)
        old = old_studies(s, lr, warmup, steps, m)
        assert new == pytest.approx(old, rel=5e-16, abs=0.0) and np.float32(new) == np.float32(old), s


@pytest.mark.parametrize("lr", [1e-5, 3e-5, 1e-4, 3e-3, 1.0])
@pytest.mark.parametrize("total,warmup", [(10, 2), (313, 31), (1000, 100), (50, 0), (4, 4)])
def test_finetune_schedule_matches_old_formula(lr: float, total: int, warmup: int) -> None:
    for s in range(1, total + 3):
        new, old = finetune_lr_at(s, total, warmup, lr), old_finetune(s, total, warmup, lr)
        # 1 - t against (total - step) / span: cancellation near the end costs up to ~400 ulp (rel 1e-13)
        assert new == pytest.approx(old, rel=1e-13, abs=1e-300) and np.float32(new) == np.float32(old), s


def test_decay_lag_holds_the_peak_one_step_and_stops_short_of_the_floor() -> None:
    kw = dict(lr=1.0, warmup_steps=4, max_steps=14, min_lr_ratio=0.1)
    lagged = [schedule(s, decay_lag=1, **kw) for s in range(1, 15)]
    plain = [schedule(s, **kw) for s in range(1, 15)]
    assert lagged[:5] == [0.25, 0.5, 0.75, 1.0, 1.0] and plain[4] < 1.0
    assert plain[-1] == pytest.approx(0.1) and lagged[-1] > 0.1
    assert lagged[5:] == pytest.approx(plain[4:-1])


@pytest.mark.parametrize("kw,field", [(dict(decay="cos"), "decay"), (dict(warmup_steps=-1), "warmup_steps"),
                                      (dict(decay_lag=-1), "decay_lag"), (dict(min_lr_ratio=1.5), "min_lr_ratio")])
def test_schedule_rejects_bad_input(kw: dict, field: str) -> None:
    args = dict(lr=1.0, warmup_steps=2, max_steps=10) | kw
    with pytest.raises(ValueError, match=field):
        schedule(3, **args)


def test_studies_use_the_package_groups_with_the_old_partition(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    import common  # noqa: F401  (experiments/common.py imports the package's schedule and groups)

    assert sys.modules["common"].param_groups is param_groups and sys.modules["common"].schedule is schedule
    for arch in ("decoder", "encoder", "vit"):
        extra = dict(image_size=8, patch_size=4, channels=1, n_classes=3) if arch == "vit" else {}
        model = build_model(ModelConfig(arch=arch, n_layers=2, d_model=16, n_heads=2, seq_len=16, vocab_size=32,
                                        **extra))
        groups = param_groups(model, 0.1)
        old_decay = [p for p in model.parameters() if p.dim() >= 2]
        old_rest = [p for p in model.parameters() if p.dim() < 2]
        assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
        assert [list(map(id, g["params"])) for g in groups] == [list(map(id, old_decay)), list(map(id, old_rest))]
        assert all(isinstance(p, torch.nn.Parameter) for g in groups for p in g["params"])
