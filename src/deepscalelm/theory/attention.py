"""Closed-form moments of softmax and of one scaled dot-product attention head (the paper's Table 1, softmax;
the paper's Table 1, attention).

Pure Python (``math`` only), so the whole-model engine can call it thousands of times.

Conventions (the paper's moment definitions, `deepscalelm.theory.moments`): a `Signal` carries the mean, the variance
and the token-to-token correlation ``corr`` of an activation (covariance of two *different* tokens at the
same hidden unit over the variance); a `Grad` the variance and token correlation of a zero-mean
gradient. All variances are in squared activation units; no quantity here has physical units.

Input model (the paper's Gaussian input model): for every hidden unit the L token values are jointly Gaussian and
exchangeable (variance sigma^2, pairwise correlation r), hidden units are independent, the weights are
i.i.d. zero-mean normal and independent of everything, and the gradient arriving from above is an
independent Gaussian field with variance sigma_g^2 and token correlation r_g.

Two forms are offered for the attention head:

* ``exact=False``: the authors' large-L formulas of the paper's Table 1, attention, transcribed literally (bidirectional
  only; for ``causal=True`` the same expressions are applied per query position with the window
  size in place of L and pooled over positions).
* ``exact=True`` (default): our finite-L version, derived in ``docs/causal_attention.md``. It uses the
  finite-window softmax second moment S_n = n E[p^2] (computed by a one-dimensional quadrature with a
  Fenton-Wilkinson log-normal model of the softmax denominator) instead of the large-L exponent
  e^{(1-r) sigma_s^2}/L, keeps the dropout term of the shared (correlated) part of the values, makes
  every logit-coupling term vanish for a one-key window, accounts for the correlated attention
  patterns of correlated queries (factor e^{r v}), and pools causal windows exactly over positions.
  The backward pass adds the gradient through the softmax into Q and K (``qk_grad=True``), to first
  order in the logit fluctuations, with the softmax-Jacobian mass S - 2C + S^2 and the coherent
  key/value term of one weight draw.

Accuracy (docs/validation.md, independent random grid, logit variance up to 1, L = 16..128): every
pooled moment within 10% at the 99th percentile; the gradient variance within 6.3% at worst,
against 43% (bidirectional) and 60% (causal) for the paper's value-path formula. Outside the range
sigma_s^2 <~ 1 the first-order terms over-estimate (15-25% on the output variance at sigma_s^2 = 2).
Beyond an effective logit variance v = 2.6 (see `deepscalelm.theory.softmax_quad`) the softmax masses,
the softmax-Jacobian mass, the value-logit coupling (`Attention._var_coupled`) and the correlated-query
factor come from exact quadratures instead (within 4% on the output and 6% on the gradient variance of
Monte Carlo for v = 3.5..20, d 64; docs/validation.md); mixed linearly with the closure up to v = 3.1.
`logit_var_note` says when a prediction is outside these validated ranges; v > `MAX_LOGIT_VAR` raises
`LogitVarianceError`.

Cost: a call is O(1) once the effective logit variance v has been seen (sums over causal windows are
memoised per v); a new v costs ~20 quadratures of 17 nodes (~0.2 ms causal, ~20 us bidirectional).

Inputs with a non-zero mean mu are folded into the Gaussian model: every path into the head goes
through a zero-mean weight matrix, so the mean acts as an extra component shared by all tokens,
sigma^2 -> sigma^2 + mu^2 and r -> (r sigma^2 + mu^2)/(sigma^2 + mu^2) (the same rule as `Linear`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, cast, overload

from .moments import Grad, Signal, _grad, _signal, clip_corr
from .rope import RopeGeometry, rope_geometry
from .softmax_quad import (
    CLOSURE_MAX_VAR,
    CLOSURE_VALID_VAR,
    QUAD_FROM_VAR,
    jacobian_mass_quad,
    logit_mean_sq,
    masses_large_v,
    masses_quad,
    pattern_corr_factor,
    quad_weight,
    window_sums_quad,
)

# the input moments of one head (`Attention._moments`): (s2x, rx, s2k, rk, ss, v)
_Moments = tuple[float, float, float, float, float, float]

__all__ = ["Softmax", "Attention", "sphere_logit_var", "softmax_sq_mass", "softmax_masses", "jac_mass",
           "VALID_LOGIT_VAR", "MC_CHECKED_LOGIT_VAR", "MAX_LOGIT_VAR", "LogitVarianceError", "logit_var_note"]

# Trapezoid rule on a standard normal variable z in [-_Z_MAX, _Z_MAX] with step _Z_STEP (17 nodes).
# For the smooth integrands used below (powers of a logistic function of an affine function of z)
# it agrees with a 29-node rule (step 0.5 on [-7, 7]) to 0.2% for v <= 4, n <= 1000.
_Z_STEP = 0.75
_Z_MAX = 6.0
_NODES = [(-_Z_MAX + k * _Z_STEP) for k in range(int(round(2 * _Z_MAX / _Z_STEP)) + 1)]
_WEIGHTS = [math.exp(-0.5 * z * z) for z in _NODES]
_WSUM = sum(_WEIGHTS)
_WEIGHTS = [w / _WSUM for w in _WEIGHTS]
_NODE_WEIGHTS = tuple(zip(_NODES, _WEIGHTS, strict=True))

_QK_NORMS = (None, "rmsnorm", "layernorm")


def _sphere_mgf(a: float, m: float) -> float:
    """E[e^{a c}] for c the first coordinate of a uniform unit vector in R^m:
    Gamma(m/2) (2/a)^{m/2-1} I_{m/2-1}(a) = sum_k (a^2/4)^k / (k! (m/2)_k)."""
    x, term, total = a * a / 4.0, 1.0, 1.0
    half = m / 2.0
    for k in range(1, 400):
        term *= x / (k * (half + k - 1.0))
        total += term
        if term < 1e-16 * total:
            break
    return total


def sphere_logit_var(v: float, m: float) -> float:
    """Effective Gaussian logit variance of QK-normed logits (docs/theory.md, "QK-norm").

    After a per-head norm the key-fluctuating part of a logit is u = sqrt(v m) c, c the cosine between
    the query and a key direction uniform in R^m (m = d_head, or d_head - 1 for LayerNorm): variance
    v but bounded, |u| <= sqrt(v m), with lighter tails than a Gaussian. The softmax moments of the
    engine take a Gaussian logit of variance v_eff; QK-norm uses v_eff = log(E[e^{2u}] / E[e^u]^2),
    which is exact for the Gaussian (-> v as m -> infinity) and for the sphere gives the same
    log-normal (Fenton-Wilkinson) variance of e^u: 0.848 at v = 1, m = 16 (0.911 at m = 32).
    """
    if v <= 0.0:
        return 0.0
    a = math.sqrt(v * m)
    return math.log(_sphere_mgf(2.0 * a, m)) - 2.0 * math.log(_sphere_mgf(a, m))

# windows up to this size get their own quadrature; beyond it S_n and C_n are computed at doubling
# window sizes and interpolated in between as n S_n = alpha + beta/n, n^2 C_n = gamma + delta/n
_N_QUAD = 16


# Effective logit variance (1 - r) sigma_s^2 up to which the softmax and attention moments were
# validated against Monte Carlo (docs/validation.md: within 10 % at v <= 1, 15-25 % at v = 2).
VALID_LOGIT_VAR = CLOSURE_VALID_VAR
# largest effective logit variance at which the quadrature forms were compared with Monte Carlo
MC_CHECKED_LOGIT_VAR = 20.0


# Largest effective logit variance the moments are computed for: far beyond it the softmax is a hard
# argmax (S_n > 0.97 at n = 300) and the quadrature's grid grows like sqrt(v).
MAX_LOGIT_VAR = 1.0e4


class LogitVarianceError(ValueError):
    """The attention logit variance is beyond `MAX_LOGIT_VAR`: the moments are not computed."""


def logit_var_note(v: float) -> str | None:
    """None when the softmax/attention moments at effective logit variance ``v`` are within their
    validated range; otherwise what the prediction rests on and how far it was measured to be off.

    Validated: v <= VALID_LOGIT_VAR (the log-normal closure and first-order coupling) and
    QUAD_FROM_VAR <= v <= MC_CHECKED_LOGIT_VAR (the quadrature forms; measured/predicted attention
    output and gradient variance 0.95-1.03 at v 3.5-20, d_model = d_head = 64, L 16-64, no dropout;
    ``python benchmarks/large_logit.py``). In between, the closure is kept (the pinned reference
    predictions reach v = 2.56) or mixed with the quadrature.
    """
    if v <= VALID_LOGIT_VAR or QUAD_FROM_VAR <= v <= MC_CHECKED_LOGIT_VAR:
        return None
    if v <= CLOSURE_MAX_VAR:
        return ("log-normal softmax closure beyond its range (measured/predicted attention output "
                "variance 0.68-0.98, gradient 0.87-0.99 at 2.56)")
    if v < QUAD_FROM_VAR:
        return "closure/quadrature mix between the two validated forms (closure: output variance 0.68-0.98 at 2.56)"
    return (f"beyond the largest logit variance checked against Monte Carlo ({MC_CHECKED_LOGIT_VAR:g}; "
            "the quadrature forms are exact in the softmax but neglect the finite-d_head spread of "
            "the logit variance across queries)")


def _check_int(name: str, value: int, lo: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")


def _check_var(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
            or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _fold_mean(x: Signal) -> tuple[float, float]:
    """(variance, correlation) seen by a zero-mean weight matrix: the mean is a shared component."""
    m2 = x.var + x.mean ** 2
    if m2 <= 0.0:
        return 0.0, 0.0
    return m2, clip_corr((x.corr * x.var + x.mean ** 2) / m2)


def _exp(v: float) -> float:
    """e^v clamped below overflow (such logit variances are far outside the validity range)."""
    return math.exp(min(v, 700.0))


def _logistic_sq(w: float) -> float:
    """(1/(1+e^w))^2, overflow-safe."""
    if w > 0:
        e = math.exp(-w)
        return (e / (1.0 + e)) ** 2
    return 1.0 / (1.0 + math.exp(w)) ** 2


def softmax_sq_mass(n: int, v: float) -> float:
    """S_n = n E[p_1^2] = E[sum_j p_j^2] for p = softmax of n i.i.d. N(0, v) logits.

    ``v`` is the *effective* logit variance (1 - r) sigma^2 (the part shared by all logits cancels).
    S_1 = 1; S_n -> e^v / n for large n; S_n = 1/n at v = 0. Computed as E[logistic(-w)^2] with
    w = log R - s_1, where the sum R of the other n - 1 exponentials is modelled as log-normal with
    the same mean and variance (Fenton-Wilkinson; exact for n = 2), by a 29-node quadrature.
    Accuracy against Monte Carlo (1e5 samples per point, n = 2..128): within 1% for v <= 0.5,
    +3.5% at most for v = 1 and +17% at most for v = 2 (worst at n = 4..16; the log-normal closure
    over-weights the heavy tail of R); exact for n <= 2 and tending to exact for large n.
    """
    if n == 1:
        return 1.0
    if v <= 0.0:
        return 1.0 / n
    if v > CLOSURE_MAX_VAR:   # beyond the closure's range: exact quadrature (softmax_quad)
        return float(masses_large_v(n, v)[0][0])
    if v > 30.0:   # log(1 + (e^v - 1)/(n - 1)) without overflow
        s2r = v + math.log1p((n - 2) * math.exp(-v)) - math.log(n - 1)
    else:
        s2r = math.log1p(math.expm1(v) / (n - 1))   # log-normal variance of R
    mur = math.log(n - 1) + 0.5 * v - 0.5 * s2r     # log-normal mean of R
    sw = math.sqrt(v + s2r)
    acc = 0.0
    for z, w in zip(_NODES, _WEIGHTS, strict=True):
        acc += w * _logistic_sq(mur + sw * z)
    return n * acc


def softmax_masses(n: int, v: float) -> tuple[float, float]:
    """(S_n, C_n) = (E[sum_j p_j^2], E[sum_j p_j^3]) for p = softmax of n i.i.d. N(0, v) logits.

    Same log-normal closure and quadrature as `softmax_sq_mass`; C_n -> e^{3v}/n^2 for large n.
    """
    if n == 1:
        return 1.0, 1.0
    if v <= 0.0:
        return 1.0 / n, 1.0 / n ** 2
    if v > CLOSURE_MAX_VAR:   # beyond the closure's range: exact quadrature (softmax_quad)
        s, c = masses_large_v(n, v)
        return float(s[0]), float(c[0])
    if v > 30.0:
        s2r = v + math.log1p((n - 2) * math.exp(-v)) - math.log(n - 1)
    else:
        s2r = math.log1p(math.expm1(v) / (n - 1))
    mur = math.log(n - 1) + 0.5 * v - 0.5 * s2r
    sw = math.sqrt(v + s2r)
    acc2 = acc3 = 0.0
    exp, sqrt = math.exp, math.sqrt
    for z, w in _NODE_WEIGHTS:
        # _logistic_sq inlined (the same operations): this loop fills the interpolation grid
        u = mur + sw * z
        if u > 0:
            e = exp(-u)
            q2 = (e / (1.0 + e)) ** 2
        else:
            q2 = 1.0 / (1.0 + exp(u)) ** 2
        acc2 += w * q2
        acc3 += w * q2 * sqrt(q2)
    return n * acc2, n * acc3


_JAC_MEMO: dict[tuple[int, float], float] = {}
_M_MEMO: dict[tuple[int, float], float] = {}


def _grid_interp(memo: dict[tuple[int, float], float], fn: Callable[[int, float], Any], n: int, v: float) -> float:
    """``fn(n, node)[0]`` linearly interpolated between the two v-grid nodes around ``v`` (the grid of
    `_full_masses`: uniform steps, geometric beyond `_V_GRID_MAX`), each node memoised in ``memo``."""
    if v >= _V_GRID_MAX:
        k, t = _geo_node(v)
        nodes = (_V_GRID_MAX * _V_RATIO ** k, _V_GRID_MAX * _V_RATIO ** (k + 1))
    else:
        k = int(v / _V_STEP)
        t = v / _V_STEP - k
        nodes = (k * _V_STEP, (k + 1) * _V_STEP)
    vals = []
    for node in nodes:
        hit = memo.get((n, node))
        if hit is None:
            if len(memo) > 20000:
                memo.clear()
            hit = memo[(n, node)] = float(fn(n, node)[0])
        vals.append(hit)
    return (1.0 - t) * vals[0] + t * vals[1]


def _exact_jac(n: int, v: float) -> float:
    """`softmax_quad.jacobian_mass_quad` of one window on the v grid of `_full_masses` (memoised)."""
    return _grid_interp(_JAC_MEMO, jacobian_mass_quad, n, v)


def _logit_m(n: int, v: float) -> float:
    """`softmax_quad.logit_mean_sq` of one window, on the v grid of `_exact_jac` (memoised)."""
    return _grid_interp(_M_MEMO, logit_mean_sq, n, v)


def jac_mass(s: float, c: float) -> float:
    """J = E[sum_j p_j^2 (delta_j - sum_l p_l delta_l)^2] / Var(delta) = S - 2 C + S^2 for i.i.d.
    unit-variance delta: the squared softmax-Jacobian mass that feeds the Q/K gradient path."""
    return max(s - 2.0 * c + s * s, 0.0)


class _SqMassTable:
    """Sums over causal windows n = 1..N of S_n, S_n/n, S_n^2 and C_n for one effective variance v.

    Windows n <= _N_QUAD are computed one by one; beyond, S_n and C_n are computed at doubling
    window sizes and interpolated (see _N_QUAD), with the partial sums of 1/n^k per segment cached.
    Cost O(_N_QUAD + log2(N / _N_QUAD)) quadratures.
    """

    quad = False   # True when built by the quadrature (its sum_j is then not S - 2C + S^2)

    def __init__(self, n_max: int, v: float) -> None:
        if v > CLOSURE_MAX_VAR:
            self._init_quad(n_max, v)
            return
        a1 = a2 = a3 = a4 = 0.0
        m = min(n_max, _N_QUAD)
        s = c = 1.0
        for n in range(1, m + 1):
            s, c = softmax_masses(n, v)
            a1 += s
            a2 += s / n
            a3 += s * s
            a4 += c
        for lo, hi, h1, h2, h3, h4 in _segments(m, n_max):
            s_hi, c_hi = softmax_masses(hi, v)
            inv = 1.0 / lo - 1.0 / hi
            beta = (lo * s - hi * s_hi) / inv            # n S_n = alpha + beta / n
            alpha = hi * s_hi - beta / hi
            delta = (lo * lo * c - hi * hi * c_hi) / inv  # n^2 C_n = gamma + delta / n
            gamma = hi * hi * c_hi - delta / hi
            a1 += alpha * h1 + beta * h2
            a2 += alpha * h2 + beta * h3
            a3 += alpha * alpha * h2 + 2.0 * alpha * beta * h3 + beta * beta * h4
            a4 += gamma * h2 + delta * h3
            s, c = s_hi, c_hi
        self.sum_s = a1        # sum_n S_n
        self.sum_s_n = a2      # sum_n S_n / n
        self.sum_s2 = a3       # sum_n S_n^2
        self.sum_c = a4        # sum_n C_n
        self.sum_j = max(a1 - 2.0 * a4 + a3, 0.0)   # sum_n J_n

    def _init_quad(self, n_max: int, v: float) -> None:
        """The same sums beyond the closure's range: every window by the quadrature (S_n saturates
        there, which the 1/n interpolation of the closure path does not describe), with the exact
        Jacobian masses and the coupling sum sum_n E[(sum_j p_j s_j)^2] / v (`_var_coupled`)."""
        (self.sum_s, self.sum_s_n, self.sum_s2, self.sum_c, j_exact,
         self.sum_m) = window_sums_quad(n_max, v)
        j = max(self.sum_s - 2.0 * self.sum_c + self.sum_s2, 0.0)
        w = quad_weight(v)
        self.sum_j = w * j_exact + (1.0 - w) * j
        self.quad = True


_SEG_CACHE: dict[tuple[int, int], list[tuple[int, int, float, float, float, float]]] = {}


def _segments(m: int, n_max: int) -> list[tuple[int, int, float, float, float, float]]:
    """Doubling segments (lo, hi] from m to n_max with sum_{lo<n<=hi} n^-k, k = 1..4."""
    key = (m, n_max)
    if key not in _SEG_CACHE:
        segs = []
        lo = m
        while lo < n_max:
            hi = min(2 * lo, n_max)
            h = [0.0, 0.0, 0.0, 0.0]
            for n in range(lo + 1, hi + 1):
                inv = 1.0 / n
                h[0] += inv
                h[1] += inv * inv
                h[2] += inv ** 3
                h[3] += inv ** 4
            segs.append((lo, hi, h[0], h[1], h[2], h[3]))
            lo = hi
        _SEG_CACHE[key] = segs
    return _SEG_CACHE[key]


def _position_sums_uncached(L: int) -> tuple[float, float, float, float]:
    """(H_L, sum_j T_j^2, P_K, P_KK): position sums for pooling causal windows (query i sees n = i).

    T_j = H_L - H_{j-1}; P_K = sum_j sum_{i != k >= j} (1 - 1/min(i,k)) / (i k) and P_KK the same
    with the square; (1 - 1/min(i,k)) is the overlap of the window-centred key fluctuations of
    queries i and k.
    """
    h = [0.0] * (L + 1)
    for i in range(1, L + 1):
        h[i] = h[i - 1] + 1.0 / i
    sum_t2 = sum((h[L] - h[j - 1]) ** 2 for j in range(1, L + 1))
    pk = pkk = 0.0
    inner1 = inner2 = 0.0                 # sum_{i<k} (1 - 1/i), sum_{i<k} (1 - 1/i)^2
    for k in range(1, L + 1):
        pk += inner1 / k
        pkk += inner2 / k
        inner1 += 1.0 - 1.0 / k
        inner2 += (1.0 - 1.0 / k) ** 2
    return h[L], sum_t2, 2.0 * pk, 2.0 * pkk


_POS_CACHE: dict[int, tuple[float, float, float, float]] = {}


def _position_sums(L: int) -> tuple[float, float, float, float]:
    if L not in _POS_CACHE:
        _POS_CACHE[L] = _position_sums_uncached(L)
    return _POS_CACHE[L]


# The v-dependent softmax sums are smooth in v (they behave like e^{k v}); whole-model predictions
# evaluate them at thousands of slightly different v. They are computed once per grid point
# v_k = k * _V_STEP and interpolated linearly in between: the interpolation error is below
# _V_STEP^2 / 8 * |f''| / f ~ 5e-5 relative for v <= 4, far under the formulas' own error.
_V_STEP = 1.0 / 64.0
_V_GRID_MAX = 16.0
_GRID_CACHE: dict[tuple[str, int, int], _SqMassTable | tuple[float, float]] = {}
# beyond _V_GRID_MAX (quadrature only) the nodes are geometric, v_k = _V_GRID_MAX * _V_RATIO^k
_V_RATIO = 1.02


class _MassSums:
    """Linear interpolation of two `_SqMassTable`s (same fields)."""

    __slots__ = ("sum_s", "sum_s_n", "sum_s2", "sum_c", "sum_j", "quad", "sum_m")

    def __init__(self, a: _SqMassTable, b: _SqMassTable, t: float) -> None:
        u = 1.0 - t
        self.sum_s = u * a.sum_s + t * b.sum_s
        self.sum_s_n = u * a.sum_s_n + t * b.sum_s_n
        self.sum_s2 = u * a.sum_s2 + t * b.sum_s2
        self.sum_c = u * a.sum_c + t * b.sum_c
        if a.quad or b.quad:   # exact Jacobian masses: interpolate them too
            self.sum_j = u * a.sum_j + t * b.sum_j
            self.sum_m = u * getattr(a, "sum_m", 0.0) + t * getattr(b, "sum_m", 0.0)
        else:
            self.sum_j = max(self.sum_s - 2.0 * self.sum_c + self.sum_s2, 0.0)
        self.quad = a.quad or b.quad


@overload
def _grid(kind: Literal["win", "win_g"], n: int, k: int) -> _SqMassTable: ...
@overload
def _grid(kind: Literal["full", "full_g"], n: int, k: int) -> tuple[float, float]: ...
def _grid(kind: str, n: int, k: int) -> _SqMassTable | tuple[float, float]:
    key = (kind, n, k)
    hit = _GRID_CACHE.get(key)
    if hit is None:
        if len(_GRID_CACHE) > 20000:
            _GRID_CACHE.clear()
        if kind.endswith("_g"):
            v = _V_GRID_MAX * _V_RATIO ** k
        else:
            v = k * _V_STEP
        hit = _SqMassTable(n, v) if kind.startswith("win") else softmax_masses(n, v)
        _GRID_CACHE[key] = hit
    return hit


def _geo_node(v: float) -> tuple[int, float]:
    """(k, t): v lies a fraction t (in log v) between the geometric nodes k and k + 1."""
    pos = math.log(v / _V_GRID_MAX) / math.log(_V_RATIO)
    k = int(pos)
    return k, pos - k


def _window_sums(n_max: int, v: float) -> _SqMassTable | _MassSums:
    """Sums over causal windows 1..n_max of the softmax masses at effective logit variance v."""
    if v <= 0.0:
        return _SqMassTable(n_max, v)
    if v >= _V_GRID_MAX:
        k, t = _geo_node(v)
        return _MassSums(_grid("win_g", n_max, k), _grid("win_g", n_max, k + 1), t)
    k = int(v / _V_STEP)
    t = v / _V_STEP - k
    return _MassSums(_grid("win", n_max, k), _grid("win", n_max, k + 1), t)


def _full_masses(n: int, v: float) -> tuple[float, float]:
    """(S_n, C_n) at effective logit variance v, interpolated on the v grid."""
    if v <= 0.0:
        return softmax_masses(n, v)
    if v >= _V_GRID_MAX:
        k, t = _geo_node(v)
        (s0, c0), (s1, c1) = _grid("full_g", n, k), _grid("full_g", n, k + 1)
        return (1.0 - t) * s0 + t * s1, (1.0 - t) * c0 + t * c1
    k = int(v / _V_STEP)
    t = v / _V_STEP - k
    (s0, c0), (s1, c1) = _grid("full", n, k), _grid("full", n, k + 1)
    return (1.0 - t) * s0 + t * s1, (1.0 - t) * c0 + t * c1


def _softmax_quad_weight(v: float) -> float:
    """Weight of the quadrature in the `Softmax` component's exact form: 0 for v <= VALID_LOGIT_VAR
    (the authors' full forms), 1 from VALID_LOGIT_VAR + 0.5, linear in between."""
    return min(1.0, max(0.0, (v - VALID_LOGIT_VAR) / 0.5))


class Softmax:
    """Softmax over a length-``seq_len`` vector of logits (the paper's Table 1, softmax).

    The logits have variance sigma^2 and pairwise correlation r (their mean is irrelevant). Only
    the effective variance v = (1 - r) sigma^2 matters. ``exact=True`` uses the authors' "full" forms,
    ``exact=False`` its large-L approximations:

    * mean 1/L;
    * variance: full (E - 1) E^2 / ((L-1) e^v + 1)^2 with E = e^{v L/(L-1)}; approx (e^v - 1)/L^2;
    * correlation of two different entries: -1/(L-1) exactly (the entries sum to one, so
      L var + L (L-1) cov = 0);
    * gradient variance: full sigma_g^2 (var_out + 1/L^2) = sigma_g^2 E[p^2], approx
      e^v sigma_g^2 / L^2. A gradient component shared by all entries (correlation r_g) is removed
      by the softmax Jacobian (J 1 = 0), so sigma_g^2 is replaced by (1 - r_g) sigma_g^2 (exact; the
      authors' checks use r_g = 0). The input gradient sums to zero, so its correlation is -1/(L-1).

    Validity: both forms assume log-normal-like statistics of the normaliser; use them for
    v = (1 - r) sigma^2 <= 1 (the authors validated sigma <= 1). Measured at L = 300 (2000 vectors,
    ``python benchmarks/validate_full.py --softmax-breakdown``), predicted/measured output variance
    full/approx: 1.03/1.01 at v = 1, 1.20/1.17 at v = 2, 3.0/2.9 at v = 4, ~140 at v = 9; the
    gradient variance is worse (1.08 at v = 1, 1.38 at v = 2, 4.6 at v = 4). The heavy-tailed
    normaliser is then dominated by a few logits, which no log-normal closure captures. With
    ``exact=True`` the forms therefore switch to the exact quadrature beyond v = 2 (Var = S_L/L - 1/L^2,
    gradient variance (1 - r_g) sigma_g^2 J_L / L with the exact Jacobian mass; mixed linearly over
    v in [2, 2.5]): within 6% of Monte Carlo for v = 2.56..20, L = 300 and 1000.
    """

    def __init__(self, seq_len: int, exact: bool = True) -> None:
        _check_int("seq_len", seq_len, 2)
        self.seq_len = seq_len
        self.exact = bool(exact)

    def _var(self, v: float) -> float:
        L = self.seq_len
        if self.exact:
            w = _softmax_quad_weight(v)
            old = 0.0 if w == 1.0 else self._var_full(v)
            if w == 0.0:
                return old
            # beyond the authors' range: Var(p) = E[p^2] - 1/L^2 = S_L / L - 1/L^2 (quadrature)
            quad = max(float(masses_quad(L, v)[0][0]) / L - 1.0 / L ** 2, 0.0)
            return w * quad + (1.0 - w) * old
        return (_exp(v) - 1.0) / L ** 2

    def _var_full(self, v: float) -> float:
        """The authors' full form of the variance (valid for v <~ 2)."""
        L = self.seq_len
        big_e = _exp(v * L / (L - 1))
        return (big_e - 1.0) * big_e ** 2 / ((L - 1) * _exp(v) + 1.0) ** 2

    def forward(self, x: Signal) -> Signal:
        v = (1.0 - x.corr) * x.var
        return Signal(1.0 / self.seq_len, self._var(v), -1.0 / (self.seq_len - 1))

    def backward(self, x: Signal, g: Grad) -> Grad:
        v = (1.0 - x.corr) * x.var
        L = self.seq_len
        ge = (1.0 - g.corr) * g.var
        w = _softmax_quad_weight(v) if self.exact else 0.0
        if self.exact and w < 1.0:
            var = ge * (self._var_full(v) + 1.0 / L ** 2)
            if w > 0.0:   # the exact Jacobian mass: E[p_i^2 (g_i - p.g)^2] = ge J_L / L
                var = w * ge * float(jacobian_mass_quad(L, v)[0]) / L + (1.0 - w) * var
        elif self.exact:
            var = ge * float(jacobian_mass_quad(L, v)[0]) / L
        else:
            var = ge * _exp(v) / L ** 2
        return Grad(var, -1.0 / (L - 1))


class _RopeWindows:
    """Softmax masses of every causal window (or of the one bidirectional window) under rotary
    positions: window n sees logits of effective variance v_n = (1 - r c_off(n)) sigma_s^2
    (docs/rope.md §2), so every window has its own S_n, C_n, J_n. Field names as `_SqMassTable`,
    plus the rotary sums the rope formulas need (all dimensionless):

    * ``sum_jq`` = sum_n (1 - r c_off(n)) J_n (Q path: the rotated shared key part no longer drops out);
    * ``sum_coh`` = sum_n c_full(n) (1 - S_n)^2 (coherent Q-path term, shrunk by the rotation);
    * ``sum_cpl`` = sum_n (1 - 1/n) c_full(n) (key-side logit coupling of the forward pass).

    Bidirectional heads store the same sums for the single window n = L (``s``, ``j`` its masses).
    """

    __slots__ = ("sum_s", "sum_s_n", "sum_j", "sum_jq", "sum_coh", "sum_cpl", "s", "j")

    def __init__(self, geo: RopeGeometry, ss: float, r: float, causal: bool) -> None:
        L = geo.seq_len
        a1 = a2 = aj = ajq = acoh = acpl = 0.0
        s = j = 1.0
        for n in (range(1, L + 1) if causal else (L,)):
            c_off, c_full = geo.c_off[n], geo.c_full[n]
            s, c = _full_masses(n, (1.0 - r * c_off) * ss) if n > 1 else (1.0, 1.0)
            j = jac_mass(s, c)
            a1 += s
            a2 += s / n
            aj += j
            ajq += (1.0 - r * c_off) * j
            acoh += c_full * (1.0 - s) ** 2
            acpl += (1.0 - 1.0 / n) * c_full
        self.sum_s, self.sum_s_n, self.sum_j, self.sum_jq = a1, a2, aj, ajq
        self.sum_coh, self.sum_cpl = acoh, acpl
        self.s, self.j = s, j


class Attention:
    """One scaled dot-product attention head (the paper's Table 1, attention), output A V before the output projection.

    Q = x W_Q, K = x W_K, V = x W_V with W in R^{d_model x d_head}, entries N(0, q_var / k_var /
    v_var); logits Q K^T / sqrt(d_head); softmax over keys (over keys 1..i for query i when
    ``causal``); inverted dropout with rate ``attn_dropout`` on the probabilities.

    ``forward(x) -> Signal`` gives the pooled moments of the L x d_head output (variance = mean over
    positions of the per-position variance, covariance = mean over position pairs i != j).
    ``backward(x, g) -> Grad`` gives the moments of the gradient at x contributed by this head
    (value path, plus the softmax path into Q and K when ``qk_grad``), g being the gradient at the
    head output.

    Cross-attention: ``kv`` gives the moments of the key/value stream (queries from x, the streams
    uncorrelated); then ``seq_len`` is the number of keys and ``q_len`` (default ``seq_len``) the
    number of queries. ``backward(x, g, kv=kv)`` is the gradient at the query input (Q path only,
    zero when ``qk_grad=False``), ``backward_kv(x, g, kv)`` the one at the key/value input.

    Keywords: ``exact`` (default True) finite-L form, False the authors' literal large-L form;
    ``qk_grad`` (default True) add the Q/K path to the gradient, False gives exactly the paper's
    value-path formula (with ``exact=False``). Validity: first order in the logit fluctuations of
    the coupling terms; accurate for logit variance sigma_s^2 = d^2 q_var k_var sigma^4 <~ 1.

    ``qk_norm`` (None, "rmsnorm", "layernorm"): q and k are normalised per head over d_head (gain 1)
    before the logits (docs/theory.md, "QK-norm"). With n = d_head (rmsnorm) or d_head - 1
    (layernorm, which also removes the mean), the logit variance is d_head / n whatever q_var, k_var
    and the input scale, the keys' token correlation becomes r (1 - (1 - r^2)/(2n)) (the norm's
    correlation map), and the Q and K gradient paths are those of the unnormalised head at the same
    logit variance times (n - 1)/(n - 2): E[d_head/|q|^2] = d_head/((n - 2) sigma_q^2) for the
    random per-token norm, times the (n - 1)/n of the gradient left by the norm's projection.
    Needs n >= 3.
    """

    def __init__(self, d_model: int, d_head: int, seq_len: int, q_var: float, k_var: float,
                 v_var: float, attn_dropout: float = 0.0, causal: bool = False, *,
                 exact: bool = True, qk_grad: bool = True, q_len: int | None = None,
                 rope: bool = False, rope_base: float = 10000.0, qk_norm: str | None = None) -> None:
        _check_int("d_model", d_model, 1)
        _check_int("d_head", d_head, 1)
        _check_int("seq_len", seq_len, 1 if causal else 2)
        _check_var("q_var", q_var)
        _check_var("k_var", k_var)
        _check_var("v_var", v_var)
        if not isinstance(attn_dropout, (int, float)) or isinstance(attn_dropout, bool) \
                or not (0.0 <= attn_dropout < 1.0):
            raise ValueError(f"attn_dropout must be in [0, 1), got {attn_dropout!r}")
        if q_len is not None:
            _check_int("q_len", q_len, 1)
        if qk_norm not in _QK_NORMS:
            raise ValueError(f"qk_norm must be one of None, 'rmsnorm', 'layernorm', got {qk_norm!r}")
        n_eff = d_head - (qk_norm == "layernorm")
        if qk_norm is not None and n_eff < 3:
            raise ValueError(f"qk_norm={qk_norm!r} needs d_head >= {4 if qk_norm == 'layernorm' else 3}, "
                             f"got d_head={d_head}")
        self.qk_norm = qk_norm
        self._norm_n = float(n_eff)
        self.d_model, self.d_head, self.seq_len = d_model, d_head, seq_len
        self.q_var, self.k_var, self.v_var = float(q_var), float(k_var), float(v_var)
        self.attn_dropout = float(attn_dropout)
        self.causal = bool(causal)
        self.exact = bool(exact)
        self.qk_grad = bool(qk_grad)
        self.q_len = seq_len if q_len is None else q_len
        self._harm, self._sum_t2, self._pk, self._pkk = _position_sums(seq_len)
        if not isinstance(rope, bool):
            raise ValueError(f"rope must be True or False, got {rope!r}")
        self.rope = rope
        self.rope_base = float(rope_base) if isinstance(rope_base, (int, float)) else rope_base
        self._geo = None
        if rope:
            if not self.exact:
                raise ValueError("rope=True needs exact=True (the paper's large-L form has no rotary positions)")
            if q_len is not None and q_len != seq_len:
                raise ValueError("rope=True is for self-attention: q_len must equal seq_len")
            self._geo = rope_geometry(d_head, rope_base, seq_len)   # validates d_head even, base > 1

    # ----------------------------------------------------------------------------- helpers
    def _qk(self, s2x: float, s2k: float) -> float:
        """q_var * k_var, or with ``qk_norm`` the product that gives the normed logit variance
        d_head / n at query/key input second moments s2x, s2k (the head then acts as one with
        unit-second-moment q and k entries)."""
        if self.qk_norm is None:
            return self.q_var * self.k_var
        m = self.d_model * self.d_model * s2x * s2k
        return self.d_head / self._norm_n / m if m > 0 else 0.0

    @overload
    def _key_corr(self, rk: float) -> float: ...
    @overload
    def _key_corr(self, rk: Any) -> Any: ...   # a numpy array (`positional`); this module stays numpy-free
    def _key_corr(self, rk: Any) -> Any:
        """Token correlation of the keys entering the logits (float or numpy array): ``rk``, or
        with ``qk_norm`` the per-head norm's map r (1 - (1 - r^2)/(2n))."""
        if self.qk_norm is None:
            return rk
        return rk * (1.0 - (1.0 - rk * rk) / (2.0 * self._norm_n))

    def _sphere_var(self, v: float) -> float:
        """With ``qk_norm``, the Gaussian logit variance with the same E[e^{2u}]/E[e^u]^2 as the
        normed logits (see `sphere_logit_var`); ``v`` itself without."""
        if self.qk_norm is None or v <= 0.0:
            return v
        return sphere_logit_var(v, self._norm_n)

    def _qk_grad_gain(self) -> float:
        """Factor on the Q and K gradient paths: 1, or (n - 1)/(n - 2) with ``qk_norm``."""
        if self.qk_norm is None:
            return 1.0
        return (self._norm_n - 1.0) / (self._norm_n - 2.0)

    def _table(self, v: float) -> _SqMassTable | _MassSums:
        return _window_sums(self.seq_len, v)

    def _full_window(self, v: float) -> tuple[float, float]:
        """(S_L, C_L) of the full window."""
        return _full_masses(self.seq_len, v)

    def _jac_mass(self, v: float) -> float:
        """J_L = S_L - 2 C_L + S_L^2 for the full (bidirectional) window."""
        if not self.exact:
            s = _exp(v) / self.seq_len
            return s * (1.0 - 1.0 / self.seq_len)
        j = jac_mass(*self._full_window(v))
        w = quad_weight(v)
        if w > 0.0:   # beyond the closure's range: the exact fourth-order mass (softmax_quad)
            j = w * _exact_jac(self.seq_len, v) + (1.0 - w) * j
        return j

    def _sq_mass(self, v: float) -> float:
        """S_L for the full (bidirectional) window."""
        if self.exact:
            return self._full_window(v)[0]
        return _exp(v) / self.seq_len

    def _rho(self, rx: float, v: float) -> float:
        """n^2 E[A_ij A_kj] for two queries with input correlation rx (e^{rx v} within the closure's
        range; `softmax_quad.pattern_corr_factor` beyond, with the full window)."""
        if v <= CLOSURE_MAX_VAR:
            return _exp(rx * v)
        return pattern_corr_factor(rx, v, self.seq_len, self._full_window(v)[0])

    def logit_var(self, x: Signal, kv: Signal | None = None) -> float:
        """Effective (key-to-key) logit variance v = (1 - r_kv) sigma_s^2 for input ``x`` (and the
        key/value stream ``kv`` of a cross-attention): the variable the softmax moments depend on."""
        return self._moments(x, kv)[5]

    def _moments(self, x: Signal, kv: Signal | None) -> _Moments:
        s2x, rx = _fold_mean(x)
        if kv is None:
            s2k, rk = s2x, rx
        else:
            s2k, rk = _fold_mean(kv)
        d = self.d_model
        qk = self._qk(s2x, s2k)
        ss = d * d * qk * s2x * s2k                 # logit variance sigma_s^2
        # effective (key-to-key) logit variance; QK-norm: bounded logits, moment-matched variance
        v = self._sphere_var((1.0 - self._key_corr(rk)) * ss)
        if v > MAX_LOGIT_VAR:
            raise LogitVarianceError(
                f"attention logit variance (1 - r) sigma_s^2 = {v:.3g} exceeds {MAX_LOGIT_VAR:g} "
                f"(sigma_s^2 = d_model^2 q_var k_var sigma_x^2 sigma_kv^2 = {d}^2 * {self.q_var:.3g} * "
                f"{self.k_var:.3g} * {s2x:.3g} * {s2k:.3g}, r = {rk:.3g}): the softmax is a hard argmax "
                "there and its moments are not computed; lower the Q/K weight variances")
        return s2x, rx, s2k, rk, ss, v

    # ----------------------------------------------------------------------------- forward
    def forward(self, x: Signal, kv: Signal | None = None) -> Signal:
        """Pooled moments of the head output (mean 0)."""
        var, cov = self._forward_unscaled(x, kv)
        dv = self.d_model * self.v_var
        return self._signal(dv * var, dv * cov)

    def _forward_unscaled(self, x: Signal, kv: Signal | None = None) -> tuple[float, float]:
        """(variance, covariance) of the head output divided by d_model * v_var.

        Nothing here depends on ``v_var``: heads that differ only in their value variance (DSLM's
        unit and final V/O blocks of one layer) share this, and `forward` scales it exactly as a
        direct computation would (same floating-point operations, so identical results).
        """
        return self._forward_ctx(x, kv)[:2]

    def _forward_ctx(self, x: Signal, kv: Signal | None = None
                     ) -> tuple[float, float, _Moments, _SqMassTable | _MassSums | _RopeWindows | None]:
        """`_forward_unscaled` plus the input moments (`_moments`) and the causal window sums it
        used, which the backward pass of the same input needs again (`_backward_ctx`)."""
        if kv is not None and self.causal:
            raise ValueError("causal must be False for cross-attention (kv given)")
        if kv is not None and self.rope:
            raise ValueError("rope must be False for cross-attention (kv given)")
        m = self._moments(x, kv)
        tab: _SqMassTable | _MassSums | _RopeWindows | None
        if self.rope:
            tab = self._rope_table(m)
            var, cov = self._rope_forward(m, tab)
            return var, cov, m, tab
        tab = self._table(m[5]) if self.causal and self.exact else None
        var, cov = self._forward_from(m, tab, kv)
        return var, cov, m, tab

    def _forward_from(self, m: _Moments, tab: _SqMassTable | _MassSums | None, kv: Signal | None
                      ) -> tuple[float, float]:
        s2x, rx, s2k, rk, ss, v = m
        d, L = self.d_model, self.seq_len
        a = 1.0 / (1.0 - self.attn_dropout)
        # logit-coupling scale: d q k sigma_x^2 sigma_kv^4 (the authors' d q k sigma^6 for self-attention)
        t = d * self._qk(s2x, s2k) * s2x * s2k * s2k
        c2 = (1.0 - rk) ** 2 * t
        if not self.exact:
            if self.causal:
                # authors' expressions per window n = i (L -> i), pooled over positions:
                # mean_i of ((i-1) c2 + e^v a (4 c2 + (1-r) s2) ) / i + r s2
                ev = _exp(v)
                var = rk * s2k + ((L - self._harm) * c2
                                  + ev * a * (4 * c2 + (1 - rk) * s2k) * self._harm) / L
                pair = 2.0 * (L - self._harm) / (L * (L - 1)) if L > 1 else 0.0
                cov = rk * s2k + (2 * c2 + (1 - rk) * s2k) * pair
            else:
                ev = _exp(v)
                var = ((L - 1) * c2 + ev * a * (4 * c2 + (1 - rk) * s2k)) / L + rk * s2k
                cov = rk * s2k + (2 * c2 + (1 - rk) * s2k) / L
            return var, cov
        diag = 4.0 if kv is None else 0.0           # query-side coupling exists only for self-attention
        w = quad_weight(v)
        if self.causal:
            assert tab is not None   # _forward_ctx builds the window sums for an exact causal head
            var = (rk * s2k + s2k * (a - rk) * tab.sum_s / L
                   + c2 * ((L - self._harm) + diag * a * (tab.sum_s - tab.sum_s_n)) / L)
            if w > 0.0:
                ext = rk * s2k + s2k * (a - rk) * tab.sum_s / L + (1.0 - rk) * s2k * (tab.sum_m - tab.sum_s) / (d * L)
                var = w * ext + (1.0 - w) * var
            # own-value part: sum over key overlaps of E[A_ij A_kj], with correlated queries
            # (factor rho - 1 on the window-centred part, see _value_path)
            if L > 1:
                npair = L * (L - 1)
                pair = 2.0 * (L - self._harm) / npair
                own = (pair + (self._rho(rx, v) - 1.0) * self._pk / npair)
            else:
                pair = own = 0.0
            cov = rk * s2k + (1 - rk) * s2k * own + 2 * c2 * pair
        else:
            s = self._sq_mass(v)
            f = 1.0 - 1.0 / L
            var = rk * s2k + s2k * s * (a - rk) + c2 * f * (1.0 + diag * a * s)
            if w > 0.0:
                var = w * self._var_coupled(s2k, rk, s, v, a) + (1.0 - w) * var
            if kv is None:
                rho = 1.0 + (self._rho(rx, v) - 1.0) * (1.0 - 1.0 / L)
                cov = rk * s2k + ((1 - rk) * s2k * rho + 2 * c2) / L
            else:
                # two queries with correlation r_x have correlated attention patterns:
                # L E[A_ij A_kj] = exp(r_x v)
                cov = rk * s2k + (1 - rk) * s2k * self._rho(rx, v) / L
        return var, cov

    def _var_coupled(self, s2k: float, rk: float, s: float, v: float, a: float) -> float:
        """Bidirectional output variance beyond the closure's range, without the first-order expansion.

        Given the query, a key's logit is s_j = u . x_j for a fixed vector u, so its input splits into
        the part along u, (s_j / |u|^2) u, and d - 1 directions independent of every logit. The value
        projection sees both: Var = r s2 + s2 S (a - r) - (1 - r) s2 S / d + (1 - r) s2 M / d with
        M = E[(sum_j p_j s_j)^2] / v (`softmax_quad.logit_mean_sq`, exact) replacing the first-order
        coupling c2 (1 - 1/L)(1 + 4 a S). Dropout is neglected in the coupling part.
        """
        m = _logit_m(self.seq_len, v)
        return rk * s2k + s2k * s * (a - rk) + (1.0 - rk) * s2k * (m - s) / self.d_model

    @staticmethod
    def _signal(var: float, cov: float) -> Signal:
        var = max(var, 0.0)
        return _signal(0.0, var, clip_corr(cov / var) if var > 0 else 0.0)

    @staticmethod
    def _grad(var: float, cov: float) -> Grad:
        var = max(var, 0.0)
        return _grad(var, clip_corr(cov / var) if var > 0 else 0.0)

    # ----------------------------------------------------------------------------- backward
    def backward(self, x: Signal, g: Grad, kv: Signal | None = None) -> Grad:
        """Gradient moments at the (query) input x contributed by this head."""
        if kv is not None:
            if self.causal:
                raise ValueError("causal must be False for cross-attention (kv given)")
            if self.rope:
                raise ValueError("rope must be False for cross-attention (kv given)")
            if not self.qk_grad:
                return _grad(0.0, 0.0)
            qv, qc = self._q_path(x, g, kv)
            return self._grad(qv, qc)
        return self._backward_ctx(x, g, self._moments(x, None), None)

    def _backward_ctx(self, x: Signal, g: Grad, m: _Moments,
                      tab: _SqMassTable | _MassSums | _RopeWindows | None) -> Grad:
        """Self-attention `backward` given the input moments ``m`` (`_moments`) and, if known, the
        causal window sums ``tab`` at its effective logit variance: the three paths share them."""
        if self.rope:
            return self._grad(*self._rope_backward(m, g, cast("_RopeWindows | None", tab)))
        tab = cast("_SqMassTable | _MassSums | None", tab)   # a rope-free head's window sums
        if tab is None and self.causal and (self.exact or self.qk_grad):
            tab = self._table(m[5])
        vv, vc = self._value_path(x, g, None, m, tab)
        if not self.qk_grad:
            return self._grad(vv, vc)
        qv, qc = self._q_path(x, g, None, m, tab)
        kv_, kc = self._k_path(x, g, None, m, tab)
        return self._grad(vv + qv + kv_, vc + qc + kc)

    def backward_kv(self, x: Signal, g: Grad, kv: Signal) -> Grad:
        """Gradient moments at the key/value input of a cross-attention head (value + K path)."""
        if self.causal:
            raise ValueError("causal must be False for cross-attention (kv given)")
        if self.rope:
            raise ValueError("rope must be False for cross-attention (kv given)")
        if kv is None:
            raise ValueError("kv must be a Signal for backward_kv")
        vv, vc = self._value_path(x, g, kv)
        if not self.qk_grad:
            return self._grad(vv, vc)
        kv_, kc = self._k_path(x, g, kv)
        return self._grad(vv + kv_, vc + kc)

    def _value_path(self, x: Signal, g: Grad, kv: Signal | None, m: _Moments | None = None,
                   tab: _SqMassTable | _MassSums | None = None) -> tuple[float, float]:
        s2x, rx, s2k, rk, ss, v = self._moments(x, kv) if m is None else m
        L = self.seq_len
        scale = self.d_head * self.v_var * g.var
        a = 1.0 / (1.0 - self.attn_dropout)
        rg = g.corr
        if not self.exact:
            if self.causal:
                # authors' value-path expression with the causal window counts (S_i = 1/i)
                var = (a * self._harm + rg * (self._sum_t2 - self._harm)) / L
                cov = ((L - self._harm) + rg * (L * L - self._sum_t2 - (L - self._harm))) / (L * (L - 1)) \
                    if L > 1 else 0.0
                return scale * var, scale * cov
            var = (1.0 + (L - 1) * rg / a) * a / L
            cov = (1.0 + (L - 1) * rg) / L
            return scale * var, scale * cov
        # Two different queries i, k attending to the same key j: correlated queries (r_x) give
        # correlated logits (covariance r_x v), and only the window-centred part of a logit moves
        # the softmax, so E[A_ij A_kj] = (1 + (rho - 1)(1 - 1/max(n_i, n_k))) / (n_i n_k) with
        # rho = e^{r_x v}. The sum of A_ij A_kl over all key pairs is 1, so the pairs j != l lose
        # what j = l gains.
        rho1 = self._rho(rx, v) - 1.0
        if self.causal:
            tab = self._table(v) if tab is None else tab
            diag = self._sum_t2 - self._harm + rho1 * self._pk
            var = (a * tab.sum_s + rg * diag) / L
            cov = ((L - tab.sum_s) + rg * (L * (L - 1) - diag)) / (L * (L - 1)) \
                if L > 1 else 0.0
            return scale * var, scale * cov
        s = self._sq_mass(v)
        lq = self.q_len if kv is not None else L
        # key j: sum over lq queries of A_ij (each of mean 1/L, sum of squares lq S / L)
        rho = 1.0 + rho1 * (1.0 - 1.0 / L)
        pairs = lq * (lq - 1) / L ** 2
        var = a * lq * s / L + rg * rho * pairs
        cov = lq * (1.0 - s) / (L * (L - 1)) + rg * pairs * (L - rho) / (L - 1)
        return scale * var, scale * cov

    def _q_path(self, x: Signal, g: Grad, kv: Signal | None, m: _Moments | None = None,
               tab: _SqMassTable | _MassSums | None = None) -> tuple[float, float]:
        """Gradient at the query input through the softmax and W_Q (first order)."""
        s2x, rx, s2k, rk, ss, v = self._moments(x, kv) if m is None else m
        L = self.seq_len
        d = self.d_model
        a = 1.0 / (1.0 - self.attn_dropout)
        # sigma_s^2 with the query variance replaced by the key/value variance (gradient wrt x)
        skv = d * d * self._qk(s2x, s2k) * s2k * s2k
        scale = skv * (1.0 - rk) * self.d_head * self.v_var * g.var * self._qk_grad_gain()
        # coherent term: for fixed weights the key K_j and the value V_j (hence g_i . V_j) of the
        # same token are correlated, so sum_j dS_ij K_j has a component that does not average out
        # over the n keys: (sigma_s^2/d) (1-r)^2 (1-S_n)^2 relative to the value-path scale.
        coh = (1.0 - rk) / d
        if self.causal:
            tab = self._table(v) if tab is None else tab
            var = (a - rk) * tab.sum_j / L
            var += coh * (L - 2 * tab.sum_s + tab.sum_s2) / L
            cov = (1.0 - rk) * g.corr * self._pk / (L * (L - 1)) if L > 1 else 0.0
            cov += g.corr * coh * (L - 2 * tab.sum_s + tab.sum_s2) / L
        else:
            s = self._sq_mass(v) if self.exact else _exp(v) / L
            f = 1.0 - 1.0 / L
            var = (a - rk) * self._jac_mass(v) + coh * (1.0 - s) ** 2
            cov = (1.0 - rk) * g.corr * f / L + g.corr * coh * (1.0 - s) ** 2
        return scale * var, scale * cov

    def _k_path(self, x: Signal, g: Grad, kv: Signal | None, m: _Moments | None = None,
               tab: _SqMassTable | _MassSums | None = None) -> tuple[float, float]:
        """Gradient at the key input through the softmax and W_K (first order)."""
        s2x, rx, s2k, rk, ss, v = self._moments(x, kv) if m is None else m
        L = self.seq_len
        a = 1.0 / (1.0 - self.attn_dropout)
        scale = ss * self.d_head * self.v_var * g.var * self._qk_grad_gain()
        rg = g.corr
        rho1 = self._rho(rx, v) - 1.0 if self.exact else 0.0     # see _value_path
        if self.causal:
            tab = self._table(v) if tab is None else tab
            var = ((a - rk) * tab.sum_j
                   + rx * rg * (1.0 - rk) * (self._pk + rho1 * self._pkk)) / L
            return scale * var, 0.0
        f = 1.0 - 1.0 / L
        lq = self.q_len if kv is not None else L
        rho = 1.0 + rho1 * f
        var = (a - rk) * self._jac_mass(v) * lq / L + rho * rx * rg * (1.0 - rk) * f * lq * (lq - 1) / L ** 2
        return scale * var, 0.0

    # ----------------------------------------------------------------------------- rotary positions
    def _rope_table(self, m: _Moments) -> _RopeWindows:
        """Window masses under rotary positions for the input moments ``m`` (`_moments`)."""
        assert self._geo is not None   # set in __init__ for rope=True
        return _RopeWindows(self._geo, m[4], m[3], self.causal)

    def _rope_rho1(self, m: _Moments) -> float:
        """e^{kappa sigma_s^2} - 1: the correlated-attention excess of two different queries on a common
        key (docs/rope.md §3). Without rotation kappa = r (1 - r), i.e. e^{r v} - 1 as in `_value_path`."""
        s2x, rx, s2k, rk, ss, v = m
        geo = self._geo
        assert geo is not None   # set in __init__ for rope=True
        c, dd = (geo.ca_c, geo.ca_d) if self.causal else (geo.bi_c, geo.bi_d)
        return _exp((rx * (1.0 - rk) * c + rx * rk * dd) * ss) - 1.0

    def _rope_forward(self, m: _Moments, tab: _RopeWindows) -> tuple[float, float]:
        """(variance, covariance) / (d_model v_var) of the head output under rotary positions."""
        s2x, rx, s2k, rk, ss, v = m
        d, L = self.d_model, self.seq_len
        a = 1.0 / (1.0 - self.attn_dropout)
        c2 = (1.0 - rk) ** 2 * d * self.q_var * self.k_var * s2x * s2k * s2k
        rho1 = self._rope_rho1(m)
        if not self.causal:
            assert self._geo is not None   # set in __init__ for rope=True
            s, f, cf = tab.s, 1.0 - 1.0 / L, self._geo.c_full[L]
            var = rk * s2k + s2k * s * (a - rk) + c2 * f * (cf + 4.0 * a * s)
            cov = rk * s2k + ((1 - rk) * s2k * (1.0 + rho1 * f) + 2 * c2 * cf) / L
            return var, cov
        var = (rk * s2k + s2k * (a - rk) * tab.sum_s / L
               + c2 * (tab.sum_cpl + 4.0 * a * (tab.sum_s - tab.sum_s_n)) / L)
        if L == 1:
            return var, rk * s2k
        npair = L * (L - 1)
        pair = 2.0 * (L - self._harm) / npair
        own = pair + rho1 * self._pk / npair
        cov = rk * s2k + (1 - rk) * s2k * own + 2 * c2 * pair * tab.sum_cpl / (L - self._harm)
        return var, cov

    def _rope_backward(self, m: _Moments, g: Grad, tab: _RopeWindows | None) -> tuple[float, float]:
        """(variance, covariance) of the input gradient under rotary positions: value path, plus the
        Q and K paths when ``qk_grad`` (docs/rope.md §4)."""
        tab = self._rope_table(m) if tab is None else tab
        s2x, rx, s2k, rk, ss, v = m
        d, L, geo = self.d_model, self.seq_len, self._geo
        assert geo is not None   # set in __init__ for rope=True
        a = 1.0 / (1.0 - self.attn_dropout)
        rg = g.corr
        unit = self.d_head * self.v_var * g.var
        rho1 = self._rope_rho1(m)
        f = 1.0 - 1.0 / L
        # value path (docs/causal_attention.md §4 with the rotary rho)
        if self.causal:
            diag = self._sum_t2 - self._harm + rho1 * self._pk
            vv = (a * tab.sum_s + rg * diag) / L
            vc = ((L - tab.sum_s) + rg * (L * (L - 1) - diag)) / (L * (L - 1)) if L > 1 else 0.0
        else:
            rho = 1.0 + rho1 * f
            vv = a * tab.s + rg * rho * f
            vc = (1.0 - tab.s) / (L - 1) + rg * (L - rho) / L
        var, cov = unit * vv, unit * vc
        if not self.qk_grad:
            return var, cov
        skv = d * d * self.q_var * self.k_var * s2k * s2k
        coh0 = (1.0 - rk) ** 2 / d
        if self.causal:
            qv = (a - rk) * tab.sum_jq / L + coh0 * tab.sum_coh / L
            qc = (1.0 - rk) ** 2 * rg * geo.ca_c * self._pk / (L * (L - 1)) if L > 1 else 0.0
            qc += rg * coh0 * tab.sum_coh / L
            kv_ = ((a - rk) * tab.sum_j + rx * rg * (1.0 - rk) * geo.ca_c * (self._pk + rho1 * self._pkk)) / L
        else:
            cf = geo.c_full[L]
            qv = (a - rk) * (1.0 - rk * geo.c_off[L]) * tab.j + coh0 * cf * (1.0 - tab.s) ** 2
            qc = (1.0 - rk) ** 2 * rg * geo.bi_c * f / L + rg * coh0 * cf * (1.0 - tab.s) ** 2
            kv_ = (a - rk) * tab.j + (1.0 + rho1 * f) * rx * rg * (1.0 - rk) * geo.bi_c * f * f
        var += unit * (skv * qv + ss * kv_)
        cov += unit * skv * qc
        return var, cov
