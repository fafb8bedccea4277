"""Training: configs and presets, the loop (AdamW, schedule, DDP/FSDP), checkpoints and the stability guard.

`deepscalelm.train.config` is torch-free (the CLI reads presets from it at start-up); the names
below that need torch are imported on first access.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import DEFAULT_PRESET, PRESETS, TrainConfig, preset, resolve

_LAZY = {"train": "loop", "evaluate": "loop", "generate": "loop", "TrainResult": "loop"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["TrainConfig", "PRESETS", "DEFAULT_PRESET", "preset", "resolve", *_LAZY]
