"""Softmax masses at large logit variance by numerical integration (no log-normal closure).

For p = softmax of n i.i.d. N(0, v) logits s_1..s_n (v the *effective* logit variance
(1 - r) sigma^2; a part shared by all logits cancels), the masses

    S_n = E[sum_j p_j^2] = n E[p_1^2],     C_n = E[sum_j p_j^3] = n E[p_1^3]

follow exactly from the Laplace identity 1/X^k = (1/Gamma(k)) int_0^inf t^(k-1) e^(-t X) dt with
X = e^(s_1) + R, R = sum_{j>1} e^(s_j), and the independence of the logits:

    E[p_1^k] = (1/Gamma(k)) int dtau  psi_k(tau) phi(tau)^(n-1),        t = e^tau,
    psi_k(tau) = E[g_k(tau + s)],  g_k(u) = exp(k u - e^u),   phi(tau) = E[exp(-e^(tau + s))].

Both expectations are convolutions of a smooth function with the N(0, v) density; they and the outer
integral are evaluated by the trapezoid rule on one uniform grid (step <= 0.05 in tau; the integrands
are smooth and decay double-exponentially on one side and exponentially on the other, so the rule
converges spectrally). Checked against the exact n = 1 value (S_1 = C_1 = 1) and against Monte Carlo
(tests/test_softmax_quad.py). Unlike the Fenton-Wilkinson closure of
`deepscalelm.theory.attention.softmax_masses` (accurate for v <~ 2) it stays exact when a few logits
dominate the normaliser, so S_n -> 1 (one winner) as v grows instead of e^v / n.

Cost: one set of convolutions per v (memoised; ~1-5 ms for v <= 20), then O(grid) per window size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import numpy as np

__all__ = ["window_sums_quad", "masses_quad", "jacobian_mass_quad", "window_jac_mass", "logit_mean_sq",
           "window_logit_mean_sq", "masses_large_v", "masses_per_window", "pattern_corr_factor",
           "quad_weight", "CLOSURE_MAX_VAR", "QUAD_FROM_VAR", "CLOSURE_VALID_VAR"]

_MEMO: dict[float, tuple[np.ndarray, ...]] = {}


def _convolve_valid(rows: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``np.convolve(row, w, "valid")`` for each row; by FFT when the kernel is long (large v), so the
    cost grows like (sd / h) log(sd / h) instead of (sd / h)^2."""
    if len(w) <= 1024:
        return np.stack([np.convolve(r, w, mode="valid") for r in rows])
    size = rows.shape[1] + len(w) - 1
    nfft = 1 << (size - 1).bit_length()
    full = np.fft.irfft(np.fft.rfft(rows, nfft, axis=1) * np.fft.rfft(w, nfft)[None, :], nfft, axis=1)
    return full[:, len(w) - 1:rows.shape[1]]


def _kernels(v: float) -> tuple[np.ndarray, ...]:
    """(h psi_2, h psi_3 / 2, log phi, h psi_4 / 6, h psi_2^2 / 6) on the tau grid, for logit variance
    v > 0 (the last two give the fourth-order masses of `jacobian_mass_quad`)."""
    hit = _MEMO.get(v)
    if hit is not None:
        return hit
    sd = math.sqrt(v)
    h = min(0.05, sd / 20.0)
    half = int(math.ceil(8.5 * sd / h))                 # Gaussian kernel on s in [-8.5 sd, 8.5 sd]
    s = h * np.arange(-half, half + 1)
    w = np.exp(-0.5 * (s / sd) ** 2)
    w /= w.sum()
    tau_lo, tau_hi = -1.5 * v - 25.0, 8.5 * sd + 5.0
    m = int(math.ceil((tau_hi - tau_lo) / h))
    # u = tau + s covers the tau grid widened by the kernel on both sides
    u = tau_lo - half * h + h * np.arange(m + 2 * half + 1)
    eu = np.exp(np.minimum(u, 700.0))
    g2 = np.exp(2.0 * np.minimum(u, 700.0) - eu)
    g3 = np.exp(3.0 * np.minimum(u, 700.0) - eu)
    g4 = np.exp(4.0 * np.minimum(u, 700.0) - eu)
    one_m_g0 = -np.expm1(-eu)                           # 1 - exp(-e^u), accurate for small e^u
    psi2, psi3, one_m_phi, psi4 = _convolve_valid(np.stack([g2, g3, one_m_g0, g4]), w)
    one_m_phi = np.clip(one_m_phi, 0.0, 1.0)
    with np.errstate(divide="ignore"):
        log_phi = np.log1p(-one_m_phi)
    out = (h * psi2, 0.5 * h * psi3, log_phi, h * psi4 / 6.0, h * psi2 * psi2 / 6.0)
    if len(_MEMO) > 512:
        _MEMO.clear()
    _MEMO[v] = out
    return out


def masses_quad(n: np.ndarray | int, v: float) -> tuple[np.ndarray, np.ndarray]:
    """(S_n, C_n) for window sizes ``n`` (int or integer array >= 1) at effective logit variance v.

    Exact up to the quadrature error (relative < 1e-6 for 0.05 <= v <= 200, n <= 10^5); v <= 0
    gives the uniform softmax (1/n, 1/n^2).
    """
    n_arr = np.atleast_1d(np.asarray(n, dtype=float))
    if np.any(n_arr < 1):
        raise ValueError(f"n must be >= 1, got {n!r}")
    if not math.isfinite(v):
        raise ValueError(f"v must be a finite logit variance, got {v!r}")
    if v <= 0.0:
        return 1.0 / n_arr, 1.0 / n_arr ** 2
    k2, k3, log_phi = _kernels(float(v))[:3]
    with np.errstate(invalid="ignore"):
        powers = np.exp(np.where(np.isfinite(log_phi), np.outer(n_arr - 1.0, log_phi), -np.inf))
    powers[n_arr == 1.0] = 1.0
    s = n_arr * (powers @ k2)
    c = n_arr * (powers @ k3)
    return np.clip(s, 1.0 / n_arr, 1.0), np.clip(c, 1.0 / n_arr ** 2, 1.0)


def jacobian_mass_quad(n: np.ndarray | int, v: float) -> np.ndarray:
    """J_n = E[sum_j p_j^2 (delta_j - sum_l p_l delta_l)^2] / Var(delta) = S_n - 2 C_n + D_n for i.i.d.
    unit-variance delta and window sizes ``n`` (int or array), with D_n = E[(sum_j p_j^2)^2] =
    n E[p_1^4] + n (n - 1) E[p_1^2 p_2^2] exact (`attention.jac_mass` replaces D_n by S_n^2, its Jensen
    lower bound). Same quadrature: E[p_1^4] = (1/6) int psi_4 phi^(n-1) and
    E[p_1^2 p_2^2] = (1/6) int psi_2^2 phi^(n-2)."""
    n_arr = np.atleast_1d(np.asarray(n, dtype=float))
    if v <= 0.0:
        return np.maximum(1.0 / n_arr - 2.0 / n_arr ** 2 + 1.0 / n_arr ** 3, 0.0)
    k2, k3, log_phi, k4, k22 = _kernels(float(v))
    lp = np.where(np.isfinite(log_phi), log_phi, -np.inf)
    with np.errstate(invalid="ignore"):
        p1 = np.exp(np.outer(n_arr - 1.0, lp))
        p2 = np.exp(np.outer(np.maximum(n_arr - 2.0, 0.0), lp))
    p1[n_arr == 1.0] = 1.0
    p1 = np.nan_to_num(p1)
    p2 = np.nan_to_num(p2)
    s = n_arr * (p1 @ k2)
    c = n_arr * (p1 @ k3)
    d = n_arr * (p1 @ k4) + n_arr * (n_arr - 1.0) * (p2 @ k22)
    return cast(np.ndarray, np.maximum(s - 2.0 * c + d, 0.0))


# The log-normal closure of `attention.softmax_masses` was validated for effective logit variance
# v <= CLOSURE_VALID_VAR (docs/validation.md). It is used unchanged up to CLOSURE_MAX_VAR (slightly
# above: the pinned reference predictions of tests/test_theory_fastpath.py reach v = 2.5625, Xavier
# at d_head = 8, and stay bit-identical); above QUAD_FROM_VAR the quadrature replaces it completely,
# and in between the two are mixed linearly in v, so predictions stay continuous in v.
CLOSURE_VALID_VAR = 2.0
CLOSURE_MAX_VAR = 2.6
QUAD_FROM_VAR = 3.1


def quad_weight(v: float) -> float:
    """Weight of the quadrature in `masses_large_v` (0 up to CLOSURE_MAX_VAR, 1 from QUAD_FROM_VAR)."""
    if v <= CLOSURE_MAX_VAR:
        return 0.0
    return min(1.0, (v - CLOSURE_MAX_VAR) / (QUAD_FROM_VAR - CLOSURE_MAX_VAR))


def _closure(n: np.ndarray, v: float) -> tuple[np.ndarray, np.ndarray]:
    """The Fenton-Wilkinson closure of `attention.softmax_masses`, vectorised over n (17-node rule)."""
    z = np.arange(-6.0, 6.0 + 1e-9, 0.75)
    zw = np.exp(-0.5 * z * z)
    zw /= zw.sum()
    s = np.ones_like(n)
    c = np.ones_like(n)
    big = n > 1
    m = n[big] - 1.0
    s2r = np.log1p(math.expm1(v) / m)
    mur = np.log(m) + 0.5 * v - 0.5 * s2r
    sw = np.sqrt(v + s2r)
    q = 1.0 / (1.0 + np.exp(np.clip(mur[:, None] + sw[:, None] * z[None, :], -700.0, 700.0)))
    s[big] = n[big] * ((q * q) @ zw)
    c[big] = n[big] * ((q * q * q) @ zw)
    return s, c


def masses_large_v(n: np.ndarray | int, v: float) -> tuple[np.ndarray, np.ndarray]:
    """(S_n, C_n) for v > CLOSURE_MAX_VAR: the quadrature, mixed with the closure up to QUAD_FROM_VAR."""
    n_arr = np.atleast_1d(np.asarray(n, dtype=float))
    s, c = masses_quad(n_arr, v)
    w = quad_weight(v)
    if w < 1.0:
        s0, c0 = _closure(n_arr, v)
        s, c = w * s + (1.0 - w) * s0, w * c + (1.0 - w) * c0
    return s, c


def pattern_corr_factor(rx: float, v: float, n: float, s_n: float) -> float:
    """rho = n^2 E[A_ij A_kj] for two queries whose logits over the same n keys correlate by rx.

    Below CLOSURE_MAX_VAR the log-normal value e^{rx v}. Beyond, rho = (n S_n)^{rx}: the same
    geometric interpolation between rho = 1 (independent queries, rx = 0) and rho = n S_n (identical
    queries, rx = 1), which equals e^{rx v} in the large-n log-normal limit (n S_n -> e^v) and stays
    within the Cauchy-Schwarz bound n S_n; mixed like `masses_large_v` in between.
    """
    base = math.exp(min(rx * v, 700.0))
    w = quad_weight(v)
    if w == 0.0:
        return base
    ext = cast(float, max(n * s_n, 1.0) ** rx)
    return w * ext + (1.0 - w) * base


_NODE_RATIO = 1.05   # geometric v-grid of `masses_per_window` (interpolation error ~1e-3 relative)


def _on_nodes(fn: Callable[[np.ndarray, float], Any], n: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``fn(n_i, v_i)`` for windows with their own logit variances v_i > CLOSURE_MAX_VAR: ``fn`` is
    evaluated at the nodes 2 * 1.05^k around each v_i and interpolated linearly in log v, so L
    different variances cost a few node evaluations. ``fn`` returns one array over the windows or a
    tuple of them; the result has one row per returned array."""
    n = np.asarray(n, dtype=float)
    v = np.asarray(v, dtype=float)
    pos = np.log(v / CLOSURE_MAX_VAR) / math.log(_NODE_RATIO)
    k = np.floor(pos).astype(int)
    t = pos - k
    out: np.ndarray | None = None
    for kk in np.unique(k):
        sel = k == kk
        lo = np.atleast_2d(np.asarray(fn(n[sel], CLOSURE_MAX_VAR * _NODE_RATIO ** int(kk)), dtype=float))
        hi = np.atleast_2d(np.asarray(fn(n[sel], CLOSURE_MAX_VAR * _NODE_RATIO ** (int(kk) + 1)), dtype=float))
        if out is None:
            out = np.empty((lo.shape[0], v.size))
        out[:, sel] = (1.0 - t[sel]) * lo + t[sel] * hi
    if out is None:  # no windows: as many empty rows as fn returns arrays
        out = np.atleast_2d(np.asarray(fn(n, CLOSURE_MAX_VAR), dtype=float))
    return out


def masses_per_window(n: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`masses_large_v` for windows with their own logit variances v_i > CLOSURE_MAX_VAR (arrays of
    one length): evaluated at the nodes 2 * 1.05^k around each v_i (memoised across calls) and
    interpolated linearly in log v (`_on_nodes`)."""
    s, c = _on_nodes(masses_large_v, n, v)
    return s, c


def window_jac_mass(n: np.ndarray, v: np.ndarray, closure_j: np.ndarray) -> np.ndarray:
    """Exact Jacobian masses (`jacobian_mass_quad`) of windows with their own logit variances
    v_i > CLOSURE_MAX_VAR, on the nodes of `masses_per_window`, mixed with the closure's value
    ``closure_j`` = S - 2C + S^2 below QUAD_FROM_VAR like `masses_large_v`."""
    v = np.asarray(v, dtype=float)
    j = cast(np.ndarray, _on_nodes(jacobian_mass_quad, n, v)[0])
    w = np.clip((v - CLOSURE_MAX_VAR) / (QUAD_FROM_VAR - CLOSURE_MAX_VAR), 0.0, 1.0)
    return cast(np.ndarray, w * j + (1.0 - w) * np.asarray(closure_j, dtype=float))


_M2_MEMO: dict[float, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def logit_mean_sq(n: np.ndarray | int, v: float) -> np.ndarray:
    """E[(sum_j p_j s_j)^2] / v for p = softmax(s), s_1..s_n i.i.d. N(0, v): the squared
    softmax-weighted logit, which carries the value-logit coupling of attention (a key's value and
    its logit share the key's input along the logit direction).

    Same quadrature as `masses_quad`: with N = sum_j s_j e^(s_j) and X = sum_j e^(s_j),
    E[N^2 / X^2] = int dtau [n E[s^2 g_2(tau+s)] phi^(n-1) + n (n-1) E[s g_1(tau+s)]^2 phi^(n-2)].
    """
    n_arr = np.atleast_1d(np.asarray(n, dtype=float))
    if v <= 0.0:
        return 1.0 / n_arr
    v = float(v)
    hit = _M2_MEMO.get(v)
    if hit is None:
        sd = math.sqrt(v)
        h = min(0.05, sd / 20.0)
        half = int(math.ceil(8.5 * sd / h))
        s = h * np.arange(-half, half + 1)
        w = np.exp(-0.5 * (s / sd) ** 2)
        w /= w.sum()
        tau_lo, tau_hi = -1.5 * v - 25.0, 8.5 * sd + 5.0
        m = int(math.ceil((tau_hi - tau_lo) / h))
        u = tau_lo - half * h + h * np.arange(m + 2 * half + 1)
        uc = np.minimum(u, 700.0)
        eu = np.exp(uc)
        g1 = np.exp(uc - eu)
        g2 = np.exp(2.0 * uc - eu)
        # kernels w s^m: E[s^m g(tau - s)]; the odd one changes sign only, and enters squared
        a2 = _convolve_valid(g2[None, :], w * s * s)[0]
        a1 = _convolve_valid(g1[None, :], w * s)[0]
        one_m_phi = np.clip(_convolve_valid(-np.expm1(-eu)[None, :], w)[0], 0.0, 1.0)
        with np.errstate(divide="ignore"):
            log_phi = np.log1p(-one_m_phi)
        hit = _M2_MEMO[v] = (h * a2, h * a1 * a1, np.where(np.isfinite(log_phi), log_phi, -np.inf))
        if len(_M2_MEMO) > 512:
            _M2_MEMO.clear()
            _M2_MEMO[v] = hit
    k2, k11, lp = hit
    with np.errstate(invalid="ignore"):
        p1 = np.nan_to_num(np.exp(np.outer(n_arr - 1.0, lp)))
        p2 = np.nan_to_num(np.exp(np.outer(np.maximum(n_arr - 2.0, 0.0), lp)))
    p1[n_arr == 1.0] = 1.0
    return cast(np.ndarray, (n_arr * (p1 @ k2) + n_arr * (n_arr - 1.0) * (p2 @ k11)) / v)


def window_logit_mean_sq(n: np.ndarray, v: np.ndarray) -> np.ndarray:
    """`logit_mean_sq` of windows with their own logit variances v_i > CLOSURE_MAX_VAR, on the nodes
    of `masses_per_window` (interpolated linearly in log v)."""
    return cast(np.ndarray, _on_nodes(logit_mean_sq, n, v)[0])


def window_sums_quad(n_max: int, v: float) -> tuple[float, float, float, float, float, float]:
    """Sums over causal windows n = 1..n_max at logit variance v > CLOSURE_MAX_VAR of S_n, S_n / n,
    S_n^2, C_n (`masses_large_v`), of the exact Jacobian mass J_n (`jacobian_mass_quad`) and of
    E[(sum_j p_j s_j)^2] / v (`logit_mean_sq`)."""
    n = np.arange(1, n_max + 1, dtype=float)
    s, c = masses_large_v(n, v)
    return (float(s.sum()), float((s / n).sum()), float((s * s).sum()), float(c.sum()),
            float(jacobian_mass_quad(n, v).sum()), float(logit_mean_sq(n, v).sum()))
