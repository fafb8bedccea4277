"""Immutable moment records of a forward signal and of a backward gradient.

Conventions (the paper's moment definitions): moments are entry-wise over a (tokens × hidden units) activation, with the
expectation over both the input distribution and the random weights.

* ``mean``: E[x_{i,k}].
* ``var``: Var[x_{i,k}] (not the second moment).
* ``corr``: token-to-token correlation, Cov(x_{i,k}, x_{j,k}) / Var for two *different* tokens
  i != j at the same hidden unit k. In [-1, 1].

Gradients have zero mean, so `Grad` carries only ``var`` and ``corr`` with the same meaning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def _check(name: str, value: float, lo: float, hi: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
            or value < lo or value > hi:
        raise ValueError(f"{name} must be a finite number in [{lo}, {hi}], got {value!r}")


_NUMBER = (float, int)


@dataclass(frozen=True)
class Signal:
    """Forward moments: mean, variance (>= 0) and token-to-token correlation (in [-1, 1])."""

    mean: float = 0.0
    var: float = 1.0
    corr: float = 0.0

    def __post_init__(self) -> None:
        # fast path: one comparison chain (this record is created thousands of times per prediction)
        if not (type(self.mean) in _NUMBER and type(self.var) in _NUMBER and type(self.corr) in _NUMBER
                and self.var >= 0.0 and -1.0 <= self.corr <= 1.0 and math.isfinite(self.mean + self.var)):
            _check("mean", self.mean, -math.inf, math.inf)
            _check("var", self.var, 0.0, math.inf)
            _check("corr", self.corr, -1.0, 1.0)

    @property
    def second_moment(self) -> float:
        """E[x^2] = var + mean^2."""
        return self.var + self.mean ** 2

    @property
    def cov(self) -> float:
        """Token-to-token covariance corr * var."""
        return self.corr * self.var


@dataclass(frozen=True)
class Grad:
    """Backward moments of a zero-mean gradient: variance (>= 0) and token-to-token correlation."""

    var: float = 1.0
    corr: float = 0.0

    def __post_init__(self) -> None:
        if not (type(self.var) in _NUMBER and type(self.corr) in _NUMBER
                and self.var >= 0.0 and -1.0 <= self.corr <= 1.0 and math.isfinite(self.var)):
            _check("var", self.var, 0.0, math.inf)
            _check("corr", self.corr, -1.0, 1.0)

    @property
    def cov(self) -> float:
        return self.corr * self.var


# Private unchecked constructors for the engine's hot paths (~10^5 records per deep prediction).
# The dataclass __init__ sets each field through object.__setattr__ (the class is frozen) and then
# validates; these write the instance dict directly and keep only the value check, falling back to
# the public constructor (which raises the usual ValueError) when a value is out of range or NaN.
# Callers pass floats computed by the engine, so the type checks of the public path are not needed.
_new = object.__new__
_INF = math.inf


def _signal(mean: float, var: float, corr: float) -> Signal:
    # the chained comparison is false for NaN and +-inf, like math.isfinite
    if var >= 0.0 and -1.0 <= corr <= 1.0 and -_INF < mean + var < _INF:
        s = _new(Signal)
        d = s.__dict__
        d["mean"] = mean
        d["var"] = var
        d["corr"] = corr
        return s
    return Signal(mean, var, corr)


def _grad(var: float, corr: float) -> Grad:
    if 0.0 <= var < _INF and -1.0 <= corr <= 1.0:
        g = _new(Grad)
        d = g.__dict__
        d["var"] = var
        d["corr"] = corr
        return g
    return Grad(var, corr)


def clip_corr(value: float) -> float:
    """Clamp a correlation computed in floating point into [-1, 1]."""
    if value > 1.0:
        return 1.0
    if value < -1.0:
        return -1.0
    return value  # NaN passes through, so the record's own validation reports it


__all__ = ["Signal", "Grad", "clip_corr"]
