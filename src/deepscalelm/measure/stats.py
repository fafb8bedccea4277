"""Moments of one activation or gradient tensor, as defined in the paper's moment definitions and the paper's component-check protocol.

For ``x[B, L, d]``: ``mean`` and ``var`` = E[x^2] - E[x]^2 over all entries; ``corr`` = mean
off-diagonal entry of the L x L covariance matrix ``torch.cov`` of positions (each position a
variable, its B*d entries the samples, position means removed, Bessel-corrected), divided by ``var``.
Computed in float64.
"""

from __future__ import annotations

import math

import torch


def moments(x: torch.Tensor) -> tuple[float, float, float]:
    """(mean, var, corr) of ``x[B, L, d]``; corr is NaN when L == 1 or var == 0."""
    if x.dim() != 3:
        raise ValueError(f"moments expects a tensor [batch, length, width], got shape {tuple(x.shape)}")
    x = x.detach().to(torch.float64)
    mean = x.mean()
    var = float((x * x).mean() - mean * mean)
    B, L, d = x.shape
    if L < 2 or var <= 0.0:
        return float(mean), var, math.nan
    cov = torch.cov(x.transpose(0, 1).reshape(L, B * d))
    off_diag = float((cov.sum() - cov.diagonal().sum()) / (L * (L - 1)))
    return float(mean), var, off_diag / var


__all__ = ["moments"]
