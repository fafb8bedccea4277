"""Monte-Carlo measurement protocol of the authors' component checks (the paper's component-check protocol), in torch.

* Inputs (the paper's Gaussian input model): shape (runs, L, d); for every (run, hidden unit) the L token values are
  jointly Gaussian with mean mu, variance sigma^2 and pairwise correlation r, built as
  mu + sigma (sqrt(r) c + sqrt(1-r) e) with one shared c per (run, unit) and i.i.d. e.
* Measurement of an activation y (runs, L, d): mean and variance over all entries
  (variance = E[y^2] - E[y]^2); token covariance = mean off-diagonal entry of torch.cov of the
  L x (runs*d) matrix (each token position a variable); optionally the covariance across hidden
  units (d x (runs*L) matrix, same procedure).
* Error `calc_err(actual, pred, pred_var)` and percentiles "entry k*total/100 of the sorted list".

torch is imported lazily so that importing this module is cheap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["sample_field", "measure", "calc_err", "percentiles", "PERCENTILES"]

PERCENTILES = (50, 90, 99)


def _torch():
    import torch

    return torch


def sample_field(runs: int, length: int, d: int, mean: float, std: float, corr: float,
                 generator: Any, dtype: Any = None) -> Any:
    """Gaussian (runs, length, d) tensor with equicorrelated tokens (the paper's Gaussian input model).

    ``corr`` in [0, 1] is the correlation between two different tokens at the same (run, unit).
    """
    torch = _torch()
    if not (0.0 <= corr <= 1.0):
        raise ValueError(f"corr must be in [0, 1], got {corr!r}")
    dtype = dtype or torch.float64
    shared = torch.randn(runs, 1, d, generator=generator, dtype=dtype)
    own = torch.randn(runs, length, d, generator=generator, dtype=dtype)
    return mean + std * (math.sqrt(corr) * shared + math.sqrt(1.0 - corr) * own)


def _offdiag_mean_cov(m: Any) -> float:
    """Mean off-diagonal entry of the covariance matrix of the rows of m (variables x samples):
    `deepscalelm.measure.stats.offdiag_mean_cov`."""
    from ..measure.stats import offdiag_mean_cov

    return offdiag_mean_cov(m)


def measure(y: Any, hidden: bool = False) -> dict[str, float]:
    """Mean, variance and token covariance of y (runs, L, d) per the paper's component-check protocol.

    The statistic is `deepscalelm.measure.stats.token_moments` computed in y's own dtype (``cov``,
    not divided by the variance; present when L > 1). With ``hidden`` also ``hidden_cov``: the mean
    covariance of two different hidden units of the same token (d x (runs*L) matrix).
    """
    from ..measure.stats import offdiag_mean_cov, token_moments

    y = y.detach()
    runs, length, d = y.shape
    m = token_moments(y, dtype=None)
    out = {"mean": m.mean, "var": m.var}
    if length > 1:
        out["cov"] = m.cov
    if hidden and d > 1:
        out["hidden_cov"] = offdiag_mean_cov(y.permute(2, 0, 1).reshape(d, runs * length))
    return out


def calc_err(actual: float, pred: float, pred_var: float | None = None) -> float:
    """Relative error of a prediction (the paper's component-check protocol).

    Without ``pred_var``: |actual - pred| / |actual|. With ``pred_var`` (a scale for quantities
    that may be ~0, e.g. means and covariances, normally the predicted variance): if pred == 0,
    min(|actual|, |actual| / pred_var); otherwise min(|actual-pred|/|actual|, |actual-pred|/pred_var).
    """
    diff = abs(actual - pred)
    if pred_var is None:
        return diff / abs(actual) if actual != 0 else (0.0 if diff == 0 else math.inf)
    if pred_var <= 0:
        raise ValueError(f"pred_var must be > 0, got {pred_var!r}")
    if pred == 0:
        return min(abs(actual), abs(actual) / pred_var)
    rel = diff / abs(actual) if actual != 0 else math.inf
    return min(rel, diff / pred_var)


def percentiles(errors: Sequence[float], ks: Sequence[int] = PERCENTILES) -> list[float]:
    """Entries k*total/100 (integer division, clipped to the last index) of the sorted errors."""
    if not errors:
        raise ValueError("errors must be a non-empty sequence")
    s = sorted(errors)
    return [s[min(len(s) - 1, k * len(s) // 100)] for k in ks]
