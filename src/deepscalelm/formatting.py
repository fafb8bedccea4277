"""Number formatting shared by the command-line reports."""

from __future__ import annotations

__all__ = ["mean_std_text"]


def mean_std_text(mean: float, std: float, n: int, digits: int = 4) -> str:
    """``"0.8125 ± 0.0100 over 3 seeds"``, or ``"0.8125 (1 seed)"`` for a single seed, where a
    standard deviation does not exist. ``n``: number of seeds (>= 1); ``digits``: decimals."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n (the number of seeds) must be an integer >= 1, got {n!r}")
    if n == 1:
        return f"{mean:.{digits}f} (1 seed)"
    return f"{mean:.{digits}f} ± {std:.{digits}f} over {n} seeds"
