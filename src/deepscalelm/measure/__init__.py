"""Measured signal propagation: ``deepscalelm.measure(model, batch, protocol) -> Trajectory``.

The module itself is callable (``deepscalelm.measure(...)`` works whether ``deepscalelm.measure``
resolves to this module or to the function).
"""

from __future__ import annotations

import sys
import types

from .probe import PROTOCOLS, measure
from .stats import moments


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return measure(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["measure", "moments", "PROTOCOLS"]
