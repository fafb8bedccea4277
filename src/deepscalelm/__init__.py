"""deepscalelm: signal-propagation theory and DeepScaleLM for very deep transformers.

The theory side (`ModelConfig`, `predict`, `Trajectory`, `deepscalelm.theory`) is pure Python and does
not import torch. The PyTorch side (`build_model`, `apply_scheme`, `measure`, ...) is imported lazily
on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import ModelConfig
from .errors import DSLMError
from .records import Record, Trajectory

__version__ = "0.1.0"

# name -> module providing it; resolved on first attribute access (keeps `import deepscalelm` torch-free)
_LAZY = {
    "predict": "deepscalelm.theory.model",
    "get_scheme": "deepscalelm.theory.schemes",
    "Scheme": "deepscalelm.theory.schemes",
    "build_model": "deepscalelm.models",
    "apply_scheme": "deepscalelm.models",
    "measure": "deepscalelm.measure",
    "check": "deepscalelm.diagnostics",
    "Telemetry": "deepscalelm.diagnostics",
    "apply": "deepscalelm.fold",
    "register": "deepscalelm.structure",
    "Structure": "deepscalelm.structure",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'deepscalelm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))


__all__ = ["ModelConfig", "Record", "Trajectory", "DSLMError", "__version__", *_LAZY]
