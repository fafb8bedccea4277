"""Monte-Carlo validation of the component moment formulas (the paper's component-check protocol).

`run_component(name, grid="quick")` samples every grid point, measures and returns, per measured
quantity, the list of relative errors and their 50/90/99th percentiles. torch is needed (imported
lazily by the checks).
"""

from __future__ import annotations

import time
from typing import Any

from .checks import CHECKS, LOGIT_COMPONENTS, authors_grid, logit_grid, quick_grid, random_grid
from .protocol import PERCENTILES, calc_err, measure, percentiles, sample_field

COMPONENTS = tuple(CHECKS)
GRIDS = ("quick", "test", "authors", "random", "logit")


def grid_points(name: str, grid: str, seed: int = 0, n_random: int = 40) -> list[dict]:
    """Grid points of component ``name``: ``quick``, ``test`` (first points of quick, fewer runs),
    ``authors`` (the paper's component-check protocol full grids), ``random`` (``n_random`` independent random points)
    or ``logit`` (large logit variance 2.56..20; softmax and attention only)."""
    if name not in CHECKS:
        raise ValueError(f"component must be one of {sorted(CHECKS)}, got {name!r}")
    if grid == "quick":
        return quick_grid(name)
    if grid == "authors":
        return authors_grid(name)
    if grid == "logit":
        return logit_grid(name)
    if grid == "random":
        if n_random < 1:
            raise ValueError(f"n_random must be >= 1, got {n_random!r}")
        return random_grid(name, n_random, seed)
    raise ValueError(f"grid must be one of {GRIDS}, got {grid!r}")


def run_points(name: str, points: list[dict], seed: int = 42, dtype: Any = None,
               stride: int = 1) -> dict[str, dict]:
    """Run the check of ``name`` on ``points`` (every ``stride``-th point) with torch seed ``seed``.

    Returns {quantity: {"errors": [...], "percentiles": [p50, p90, p99], "n": count}} (errors as
    fractions, not %), plus the key "_seconds" with the wall time.
    """
    import torch

    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride!r}")
    dtype = dtype or torch.float64
    gen = torch.Generator().manual_seed(seed)
    check = CHECKS[name]
    errs: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    for pt in points[::stride]:
        for qty, actual, pred, pred_var in check(pt, gen, dtype):
            errs.setdefault(qty, []).append(calc_err(actual, pred, pred_var))
    out: dict[str, Any] = {q: {"errors": e, "percentiles": percentiles(e), "n": len(e)}
                           for q, e in errs.items()}
    out["_seconds"] = time.perf_counter() - t0
    return out


def run_component(name: str, grid: str = "quick", seed: int = 42, n_random: int = 40,
                  dtype: Any = None, stride: int = 1) -> dict[str, dict]:
    """`grid_points` + `run_points`."""
    return run_points(name, grid_points(name, grid, seed, n_random), seed, dtype, stride)


__all__ = ["COMPONENTS", "GRIDS", "LOGIT_COMPONENTS", "grid_points", "run_points", "run_component", "calc_err",
           "measure", "percentiles", "sample_field", "PERCENTILES"]
