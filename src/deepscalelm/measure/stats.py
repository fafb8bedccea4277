"""The one token-moment statistic of deepscalelm (the paper's moment definitions and component-check protocol).

For ``x[B, L, d]`` (batch, tokens, hidden units): ``mean`` and ``var = E[x^2] - E[x]^2`` over all
B*L*d entries; ``cov`` = mean off-diagonal entry of the L x L covariance matrix of token positions
(each position a variable, its B*d entries the samples, position means removed, Bessel-corrected,
as ``torch.cov``); ``corr = cov / var``. `token_moments` computes all of them and is used by
`deepscalelm.measure`, the diagnostics (`check`, `Telemetry`) and the Monte-Carlo component checks
(`deepscalelm.validate.protocol`); `moments` is its (mean, var, corr) view.

The covariance is computed without forming the L x L matrix: the sum of all its entries is
``sum_s (sum_i xc[i, s])^2 / (n - 1)`` (xc: centred positions, n = B*d samples) and its trace is
``sum xc^2 / (n - 1)``, so the cost is O(B*L*d) instead of O(B*L^2*d).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

__all__ = ["moments", "token_moments", "offdiag_mean_cov", "TokenMoments"]


class TokenMoments(NamedTuple):
    """Moments of one tensor ``[B, L, d]`` (see the module docstring); NaN where undefined."""

    mean: float
    var: float
    corr: float
    cov: float
    finite: bool


def offdiag_mean_cov(m: torch.Tensor) -> float:
    """Mean off-diagonal entry of the covariance matrix of the rows of ``m`` (variables x samples).

    Equal to the mean off-diagonal entry of ``torch.cov(m)`` (denominator samples - 1), computed in
    ``m``'s dtype without forming the matrix: sum_{i != j} C_ij = Var(sum_i m_i) - sum_i Var(m_i).
    NaN when there are fewer than 2 variables or 2 samples.
    """
    n, samples = m.shape
    if n < 2 or samples < 2:
        return math.nan
    centred = m - m.mean(dim=1, keepdim=True)
    total = float((centred.sum(dim=0) ** 2).sum()) / (samples - 1)  # sum of all n*n covariance entries
    diag = float((centred * centred).sum()) / (samples - 1)  # trace of the covariance
    return (total - diag) / (n * (n - 1))


def token_moments(x: torch.Tensor, dtype: torch.dtype | None = torch.float64) -> TokenMoments:
    """(mean, var, corr, cov, finite) of ``x[B, L, d]``, computed in ``dtype`` (None: ``x``'s own dtype).

    ``finite`` says whether every entry is finite. ``corr`` is NaN when L < 2, B*d < 2, var <= 0 or
    a value is not finite; ``cov`` is NaN when L < 2 or B*d < 2 (and non-finite with x).
    ``var`` is ``float(E[x^2]) - float(E[x])^2`` (the subtraction in double precision).
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"moments expects a tensor [batch, length, width], got shape {shape}")
    x = x.detach()
    finite = bool(torch.isfinite(x).all())
    if dtype is not None:
        x = x.to(dtype)
    B, L, d = x.shape
    mean = float(x.mean())
    var = float((x * x).mean()) - mean * mean
    cov = offdiag_mean_cov(x.transpose(0, 1).reshape(L, B * d))
    corr = cov / var if finite and var > 0.0 and math.isfinite(cov) else math.nan
    return TokenMoments(mean, var, corr, cov, finite)


def moments(x: torch.Tensor) -> tuple[float, float, float]:
    """(mean, var, corr) of ``x[B, L, d]`` in float64 (`token_moments`); corr is NaN when L == 1 or var == 0."""
    m = token_moments(x)
    return m.mean, m.var, m.corr
