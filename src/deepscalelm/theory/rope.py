"""Position geometry of rotary positions (RoPE) for the attention moments (docs/rope.md).

Queries and keys of one head are rotated pairwise: frequency pair p (p = 0..d_head/2 - 1) of the
vector at position m is turned by the angle m theta_p, theta_p = base^(-2p/d_head) radians per
position (the models' rotate-half layout, `deepscalelm.models.components.rope_tables`). The logit
of query i and key j is then q_i^T R((j - i) theta) k_j / sqrt(d_head). Averaged over weights that
are i.i.d. and isotropic, two such logits covary through the rotary kernel

    c(Delta) = mean_p cos(theta_p Delta)        (c(0) = 1, |c| <= 1),

because E[q^T R(a) R(b)^T q] = |q|^2 c(a - b). Everything here is a window average of c, computed
once per (d_head, base, seq_len) through the per-frequency window sums
|F_p(n)|^2 = |sum_{j<n} e^{i theta_p j}|^2 = sin^2(n theta_p / 2) / sin^2(theta_p / 2), and memoised.
Pure Python (``math`` only); the causal pair sums are O(L^2 d_head / 2) once per geometry.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    import numpy as np

__all__ = ["RopeGeometry", "rope_geometry", "rope_kernel"]


def _check_geometry(d_head: int, base: float, seq_len: int) -> None:
    if not isinstance(d_head, int) or isinstance(d_head, bool) or d_head < 2 or d_head % 2:
        raise ValueError(f"d_head must be an even integer >= 2 for rope, got {d_head!r}")
    if not isinstance(base, (int, float)) or isinstance(base, bool) or not math.isfinite(base) or base <= 1.0:
        raise ValueError(f"rope_base must be a finite number > 1, got {base!r}")
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 1:
        raise ValueError(f"seq_len must be an integer >= 1, got {seq_len!r}")


def _thetas(d_head: int, base: float) -> list[float]:
    return [base ** (-2.0 * p / d_head) for p in range(d_head // 2)]


def rope_kernel(d_head: int, base: float, delta: int) -> float:
    """c(delta) = mean over frequency pairs of cos(theta_p delta) (dimensionless, c(0) = 1)."""
    _check_geometry(d_head, base, 1)
    th = _thetas(d_head, base)
    return sum(math.cos(t * delta) for t in th) / len(th)


def _f2(theta: float, n: int) -> float:
    """|sum_{j=0}^{n-1} e^{i theta j}|^2."""
    s = math.sin(0.5 * theta)
    if abs(s) < 1e-12:
        return float(n * n)
    return (math.sin(0.5 * n * theta) / s) ** 2


class RopeGeometry:
    """Window averages of the rotary kernel c for one head geometry (all dimensionless).

    Attributes (lists indexed by the window size n = 1..L, index 0 unused):

    * ``c_full[n]`` = (1/n^2) sum_{j,l<n} c(j - l): shrinkage of a window-mean of rotated vectors,
      |mean_j R_j q|^2 = |q|^2 c_full[n];
    * ``c_off[n]`` = mean over the pairs j != l of a window of c(j - l) (0 for n = 1): the factor by
      which the token correlation r of two keys becomes the correlation of their logits against one
      query (r -> r c_off).

    Pair sums over queries (two different queries i != k of the sequence):

    * ``bi_c``, ``bi_d``: bidirectional means over the pairs i != k of c(i - k) and of
      (c(i - k) - m(i - k)) / (1 - 1/L), m(i - k) = (1/L^2) sum_{j,l} c(j - l - (i - k)) being the
      window centring of the part of the logits shared by both tokens (0 without rotation);
    * ``ca_c``, ``ca_d``: the same for causal windows, weighted by the causal key-overlap weights
      w_ik = (1 - 1/min(i,k)) / (i k) (the weights of P_K in docs/causal_attention.md), with m
      over the common window 1..min(i, k) and (1 - 1/min(i, k)) in place of (1 - 1/L).
    """

    def __init__(self, d_head: int, base: float, seq_len: int) -> None:
        _check_geometry(d_head, base, seq_len)
        self.d_head, self.base, self.seq_len = d_head, float(base), seq_len
        th = _thetas(d_head, base)
        P = len(th)
        L = seq_len
        self.kernel = [sum(math.cos(t * dl) for t in th) / P for dl in range(L + 1)]
        self.c_full = [0.0] * (L + 1)
        self.c_off = [0.0] * (L + 1)
        f2 = [[0.0] * P for _ in range(L + 1)]
        for n in range(1, L + 1):
            row = [_f2(t, n) for t in th]
            f2[n] = row
            cf = sum(row) / (P * n * n)
            self.c_full[n] = cf
            self.c_off[n] = (n * n * cf - n) / (n * (n - 1)) if n > 1 else 0.0
        self.bi_c, self.bi_d = self._bidirectional(th, f2[L], L)
        self.ca_c, self.ca_d = self._causal(th, f2, L)

    def _bidirectional(self, th: list[float], f2L: list[float], L: int) -> tuple[float, float]:
        if L < 2:
            return 1.0, 0.0
        P = len(th)
        # mean over i != k: (sum over all (i,k) - diagonal) / (L (L - 1)); sum_{i,k} c(i-k) = L^2 c_full
        c = (L * L * self.c_full[L] - L) / (L * (L - 1))
        m_all = sum(v * v for v in f2L) / (P * L * L)        # sum_{i,k} m(i - k)
        m = (m_all - L * self.c_full[L]) / (L * (L - 1))
        return c, (c - m) / (1.0 - 1.0 / L)

    def _causal(self, th: list[float], f2: list[list[float]], L: int) -> tuple[float, float]:
        """Weighted pair means for causal windows (O(L^2 P) numpy, once per geometry)."""
        if L < 2:
            return 1.0, 0.0
        import numpy as np

        P = len(th)
        theta = np.asarray(th)
        kern = np.asarray(self.kernel)
        wsum = csum = dsum = 0.0
        for i in range(2, L):                # i = min(i, k), k = i+1..L (both orders: same weight)
            ov = 1.0 - 1.0 / i
            k = np.arange(i + 1, L + 1)
            dl = k - i
            w = ov / (i * k)
            # m_ik = (1/i^2) sum_{j,l<=i} c(j - l - (k - i)) = mean_p cos(theta_p dl) |F_p(i)|^2 / i^2
            m = np.cos(np.outer(dl, theta)) @ np.asarray(f2[i]) / (P * i * i)
            wsum += float(w.sum())
            csum += float((w * kern[dl]).sum())
            dsum += float((w * (kern[dl] - m)).sum()) / ov
        if wsum <= 0.0:
            return 1.0, 0.0
        return csum / wsum, dsum / wsum


    def pair_matrices(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(Kc, D, c_full, c_off) as numpy arrays for the position-resolved causal engine
        (`deepscalelm.theory.positional`), positions 1..L: Kc[i, k] = c(i - k);
        D[i, k] = (c(i - k) - m_ik) / (1 - 1/min(i, k)) with m over the common window 1..min(i, k)
        (0 where min = 1 and on the diagonal); c_full, c_off per window n = 1..L. Memoised."""
        hit = getattr(self, "_pairs", None)
        if hit is not None:
            return cast("tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]", hit)
        import numpy as np

        L = self.seq_len
        th = np.asarray(_thetas(self.d_head, self.base))
        P = len(th)
        kern = np.asarray(self.kernel)
        idx = np.arange(L)
        Kc = kern[np.abs(idx[:, None] - idx[None, :])]
        D = np.zeros((L, L))
        for i in range(2, L):                # 1-based min position i, partners k = i+1..L
            dl = np.arange(1, L - i + 1)
            f2 = np.array([_f2(t, i) for t in th])
            m = np.cos(np.outer(dl, th)) @ f2 / (P * i * i)
            row = (kern[dl] - m) / (1.0 - 1.0 / i)
            D[i - 1, i:] = row
            D[i:, i - 1] = row
        out = (Kc, D, np.asarray(self.c_full[1:]), np.asarray(self.c_off[1:]))
        self._pairs = out
        return out


@lru_cache(maxsize=256)
def rope_geometry(d_head: int, base: float, seq_len: int) -> RopeGeometry:
    """Memoised `RopeGeometry`."""
    return RopeGeometry(d_head, float(base), seq_len)
