"""Closed-form moments of every transformer component (the paper's Table 1).

Each component has ``forward(x: Signal) -> Signal`` (moments of the output given the input's) and
``backward(x: Signal, g: Grad) -> Grad`` (moments of the gradient at the input, given the forward
input ``x`` and the gradient ``g`` arriving at the output). Assumptions (the paper's Gaussian input model): for each
hidden unit the L token values are jointly Gaussian and exchangeable (mean mu, variance sigma^2, pairwise
correlation r); hidden units are independent; weights are i.i.d. zero-mean normal and independent of
the inputs; the incoming gradient is independent of the forward activations.

`Softmax` and `Attention` live in `deepscalelm.theory.attention` and are re-exported here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from .moments import Grad, Signal, _grad, _signal, clip_corr

_TWO_PI = 2.0 * math.pi


def _positive_int(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _nonneg(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _zero_mean(component: str, mean: float, var: float) -> None:
    if abs(mean) > 1e-6 * max(1.0, math.sqrt(var)):
        raise ValueError(f"{component} moments assume a zero-mean input (e.g. a Linear output), got "
                         f"mean={mean!r}; put a zero-mean-weight Linear or LayerNorm before it")


# The FFN parts also have float-level forms, ``_fwd(mean, var, corr) -> (mean, var, corr)`` and
# ``_bwd(x_mean, x_var, x_corr, g_var, g_corr) -> (g_var, g_corr)``: `FFNBlock` chains them without
# building a record per part (the public forward/backward wrap the same functions, so there is
# one copy of each formula). Ranges are checked when the chain's result becomes a Signal/Grad.


@dataclass(frozen=True)
class Linear:
    """y = x W with W in R^{d_in x d_out}, W_ij ~ N(0, weight_var), no bias (the paper's Table 1, linear).

    A non-zero input mean acts as extra token correlation: r_out = (r sigma^2 + mu^2)/(sigma^2 + mu^2).
    The gradient keeps its correlation: var_in = d_out * weight_var * var_g.
    """

    d_in: int
    d_out: int
    weight_var: float

    def __post_init__(self) -> None:
        _positive_int("d_in", self.d_in)
        _positive_int("d_out", self.d_out)
        _nonneg("weight_var", self.weight_var)

    def forward(self, x: Signal) -> Signal:
        return _signal(*self._fwd(x.mean, x.var, x.corr))

    def backward(self, x: Signal, g: Grad) -> Grad:
        return _grad(self.d_out * self.weight_var * g.var, g.corr)

    def _fwd(self, mean: float, var: float, corr: float) -> tuple[float, float, float]:
        # x.second_moment and x.cov written out (the same operations)
        mean2 = mean ** 2
        m2 = var + mean2
        out = self.d_in * self.weight_var * m2
        r = (corr * var + mean2) / m2 if m2 > 0 else 0.0
        return 0.0, out, clip_corr(r)

    def _bwd(self, mean: float, var: float, corr: float, g_var: float, g_corr: float
             ) -> tuple[float, float]:
        return self.d_out * self.weight_var * g_var, g_corr


@dataclass(frozen=True)
class Dropout:
    """Inverted dropout with drop probability p: kept units scaled by 1/(1-p) (the paper's Table 1, dropout).

    Output variance (sigma^2 + p mu^2)/(1-p); the token covariance is unchanged, so for mu = 0
    r_out = (1-p) r. The gradient is masked the same way: var/(1-p), covariance unchanged.
    """

    p: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.p, (int, float)) or not (0.0 <= self.p < 1.0):
            raise ValueError(f"p (dropout probability) must be in [0, 1), got {self.p!r}")

    def forward(self, x: Signal) -> Signal:
        return _signal(*self._fwd(x.mean, x.var, x.corr))

    def backward(self, x: Signal, g: Grad) -> Grad:
        return _grad(*self._bwd(0.0, 0.0, 0.0, g.var, g.corr))

    def _fwd(self, mean: float, var: float, corr: float) -> tuple[float, float, float]:
        out = (var + self.p * mean ** 2) / (1.0 - self.p)
        return mean, out, clip_corr(corr * var / out) if out > 0 else 0.0

    def _bwd(self, mean: float, var: float, corr: float, g_var: float, g_corr: float
             ) -> tuple[float, float]:
        out = g_var / (1.0 - self.p)
        return out, clip_corr(g_corr * g_var / out) if out > 0 else 0.0


def relu_cov_factor(r: float) -> float:
    """E[ReLU(u) ReLU(v)] / sigma^2 for standard-normal u, v with correlation r (uncentred)."""
    r = clip_corr(r)
    return (math.sqrt(1.0 - r * r) + (math.pi - math.acos(r)) * r) / _TWO_PI


@dataclass(frozen=True)
class ReLU:
    """max(0, x) of a zero-mean Gaussian input (the paper's Table 1, ReLU).

    Output mean sigma/sqrt(2 pi), variance sigma^2 (pi-1)/(2 pi), second moment sigma^2/2; gradient
    variance var_g/2 and covariance (1/4 + arcsin(r)/(2 pi)) r_g var_g.
    """

    def forward(self, x: Signal) -> Signal:
        return _signal(*self._fwd(x.mean, x.var, x.corr))

    def backward(self, x: Signal, g: Grad) -> Grad:
        return _grad(*self._bwd(x.mean, x.var, x.corr, g.var, g.corr))

    def _fwd(self, mean: float, var: float, corr: float) -> tuple[float, float, float]:
        if mean:  # a Linear output has mean exactly 0: skip the check
            _zero_mean("ReLU", mean, var)
        s2 = var
        m = math.sqrt(s2 / _TWO_PI)
        out = s2 * (math.pi - 1.0) / _TWO_PI
        cov = s2 * relu_cov_factor(corr) - m ** 2
        return m, out, clip_corr(cov / out) if out > 0 else 0.0

    def _bwd(self, mean: float, var: float, corr: float, g_var: float, g_corr: float
             ) -> tuple[float, float]:
        if mean:
            _zero_mean("ReLU", mean, var)
        r = clip_corr(corr)
        out = g_var / 2.0
        cov = (0.25 + math.asin(r) / _TWO_PI) * (g_corr * g_var)   # g.cov
        return out, clip_corr(cov / out) if out > 0 else 0.0


def gelu_moments(s2: float) -> tuple[float, float]:
    """(mean, variance) of GeLU(x) = x Phi(x) for x ~ N(0, s2) (the paper's Table 1, GeLU)."""
    a = s2 / (1.0 + s2)
    mean = s2 / math.sqrt(_TWO_PI * (1.0 + s2))
    var = (s2 / _TWO_PI) * (math.pi - a - math.acos(a) + 2.0 * a * math.sqrt((1.0 - a) / (1.0 + a)))
    return mean, var


def gelu_cross_moment(s2: float, r: float) -> float:
    """E[GeLU(u) GeLU(v)] (uncentred) for u, v ~ N(0, s2) with correlation r."""
    a = s2 / (1.0 + s2)
    rs = r * s2
    return (s2 / 4.0) * (r + (2.0 / math.pi) * r * math.asin(r * a)
                         + (2.0 / math.pi) * s2 * (s2 * (1.0 - r * r) + (1.0 + r * r))
                         / ((s2 + 1.0) * math.sqrt((s2 + 1.0) ** 2 - rs ** 2)))


def gelu_grad_moment(s2: float) -> float:
    """E[GeLU'(x)^2] for x ~ N(0, s2) (the backward gain)."""
    a = s2 / (1.0 + s2)
    return 0.5 + (-math.acos(a) + a * (5.0 * s2 + 3.0) / cast(float, (1.0 + 2.0 * s2) ** 1.5)) / _TWO_PI


def gelu_grad_cross_moment(s2: float, r: float) -> float:
    """E[GeLU'(u) GeLU'(v)] for u, v ~ N(0, s2) with correlation r."""
    a = s2 / (1.0 + s2)
    rs, ra = r * s2, r * a
    return 0.5 + (-math.acos(ra) + ra * ((s2 + 1.0) * (2.0 * s2 + 3.0) - 2.0 * rs ** 2)
                  / cast(float, ((s2 + 1.0) ** 2 - rs ** 2) ** 1.5)) / _TWO_PI


@dataclass(frozen=True)
class GeLU:
    """x Phi(x) (exact erf form) of a zero-mean Gaussian input (the paper's Table 1, GeLU).

    Forward and backward gains differ (at unit input E[GeLU^2] = 0.4252, E[GeLU'^2] = 0.4559).
    """

    def forward(self, x: Signal) -> Signal:
        return _signal(*self._fwd(x.mean, x.var, x.corr))

    def backward(self, x: Signal, g: Grad) -> Grad:
        return _grad(*self._bwd(x.mean, x.var, x.corr, g.var, g.corr))

    def _fwd(self, x_mean: float, x_var: float, x_corr: float) -> tuple[float, float, float]:
        if x_mean:  # a Linear output has mean exactly 0: skip the check
            _zero_mean("GeLU", x_mean, x_var)
        s2, r = x_var, clip_corr(x_corr)
        if s2 == 0:
            return 0.0, 0.0, 0.0
        mean, var = gelu_moments(s2)
        cov = gelu_cross_moment(s2, r) - mean ** 2
        return mean, var, clip_corr(cov / var) if var > 0 else 0.0

    def _bwd(self, x_mean: float, x_var: float, x_corr: float, g_var: float, g_corr: float
             ) -> tuple[float, float]:
        if x_mean:
            _zero_mean("GeLU", x_mean, x_var)
        s2, r = x_var, clip_corr(x_corr)
        var = g_var * gelu_grad_moment(s2)
        if var == 0:
            return 0.0, 0.0
        return var, clip_corr((g_corr * g_var) * gelu_grad_cross_moment(s2, r) / var)   # g.cov

    def _gate_moments(self, var: float, corr: float) -> tuple[float, float, float, float]:
        """(E[f(u)^2], E[f(u) f(v)], E[f'(u)^2], E[f'(u) f'(v)]) for u, v ~ N(0, var) with
        correlation ``corr`` (uncentred): what a gated product needs (`GatedProduct`)."""
        r = clip_corr(corr)
        mean, v = gelu_moments(var)
        return (v + mean ** 2, gelu_cross_moment(var, r), gelu_grad_moment(var),
                gelu_grad_cross_moment(var, r))


# ------------------------------------------------------------------------------------------ SiLU
# Hermite series of SiLU: for u, v ~ N(0, s2) with correlation r, E[f(u) f(v)] = sum_n a_n r^n with
# a_n = E[f(s z) h_n(z)]^2 (h_n the orthonormal probabilists' Hermite polynomials, Mehler's formula).
# The coefficients depend on s2 only: computed once per variance by a trapezoid rule in z (spectrally
# accurate for this analytic, Gaussian-damped integrand; the step resolves the sigmoid's poles at
# distance pi/s from the real axis), then each correlation costs one polynomial evaluation.
_SILU_TERMS = 64
_SILU_MEMO: dict[float, tuple[float, float, tuple[float, ...], float, float, tuple[float, ...], float]] = {}


def _trapezoid_grid(s2: float) -> tuple[Any, Any, Any]:
    """(z, w, x) of the trapezoid rule over z ~ N(0, 1) on [-14, 14] used for SiLU/GeLU kernels at input
    variance s2: nodes z, weights w (the Gaussian density times the step), inputs x = sqrt(s2) z; the
    step resolves the sigmoid's poles at distance pi/s from the real axis."""
    import numpy as np

    s = math.sqrt(s2)
    h = max(min(0.2, 0.6 / s), 0.005)
    z = np.arange(-14.0, 14.0 + 0.5 * h, h)
    w = np.exp(-0.5 * z * z) * (h / math.sqrt(_TWO_PI))
    return z, w, s * z


def _silu_series(s2: float) -> tuple[float, float, tuple[float, ...], float, float, tuple[float, ...], float]:
    """(mean, E[f^2], series of E[f f], its tail at r = 1, E[f'^2], series of E[f' f'], tail)."""
    hit = _SILU_MEMO.get(s2)
    if hit is not None:
        return hit
    import numpy as np

    z, w, x = _trapezoid_grid(s2)
    sig = 0.5 * (1.0 + np.tanh(0.5 * x))          # overflow-free logistic
    f = x * sig
    fp = sig * (1.0 + x * (1.0 - sig))
    wf, wfp = w * f, w * fp
    hm, hn = np.zeros_like(z), np.ones_like(z)     # h_{n-1}, h_n
    bf, bfp = [], []
    for n in range(_SILU_TERMS):
        bf.append(float(wf @ hn))
        bfp.append(float(wfp @ hn))
        hm, hn = hn, (z * hn - math.sqrt(n) * hm) / math.sqrt(n + 1)
    m2, dm2 = float(wf @ f), float(wfp @ fp)

    def series(b: list[float], total: float) -> tuple[tuple[float, ...], float]:
        a = [c * c for c in b]
        while len(a) > 2 and a[-1] < 1e-18 * total:   # drop negligible trailing terms
            a.pop()
        return tuple(a), max(total - math.fsum(a), 0.0)

    af, tf = series(bf, m2)
    ap, tp = series(bfp, dm2)
    out = (bf[0], m2, af, tf, dm2, ap, tp)
    if len(_SILU_MEMO) > 1024:
        _SILU_MEMO.clear()
    _SILU_MEMO[s2] = out
    return out


_EXTRA_MEMO: dict[tuple[str, float], tuple[float, float]] = {}


def _reuse_moments(name: str, s2: float) -> tuple[float, float]:
    """(E[f'(a)^2 a^2]/s2, E[f(a) f'(a) a]/s2) for a ~ N(0, s2), f = SiLU or GeLU: the kernels of the
    O(1/d) weight-reuse terms of a gated block's backward (`FFNBlock`). Trapezoid rule as in
    `_silu_series`, cached per variance."""
    key = (name, s2)
    hit = _EXTRA_MEMO.get(key)
    if hit is not None:
        return hit
    import numpy as np

    z, w, x = _trapezoid_grid(s2)
    if name == "silu":
        cdf = 0.5 * (1.0 + np.tanh(0.5 * x))
        fp = cdf * (1.0 + x * (1.0 - cdf))
    else:
        cdf = 0.5 * (1.0 + np.array([math.erf(v / math.sqrt(2.0)) for v in x]))
        fp = cdf + x * np.exp(-0.5 * x * x) / math.sqrt(_TWO_PI)
    f = x * cdf
    out = (float(w @ (fp * fp * x * x)) / s2, float(w @ (f * fp * x)) / s2)
    if len(_EXTRA_MEMO) > 1024:
        _EXTRA_MEMO.clear()
    _EXTRA_MEMO[key] = out
    return out


def _mehler(coeffs: tuple[float, ...], tail: float, r: float) -> float:
    """sum_n coeffs[n] r^n, plus the truncated tail (exact at r = 1) taken as tail * r^N for r > 0."""
    acc = 0.0
    for c in reversed(coeffs):
        acc = acc * r + c
    return acc + tail * r ** len(coeffs) if r > 0 else acc


def silu_moments(s2: float) -> tuple[float, float]:
    """(mean, variance) of SiLU(x) = x sigmoid(x) for x ~ N(0, s2) (no closed form: quadrature)."""
    if s2 == 0:
        return 0.0, 0.0
    mean, m2 = _silu_series(s2)[:2]
    return mean, max(m2 - mean * mean, 0.0)


@dataclass(frozen=True)
class SiLU:
    """x sigmoid(x) (Swish-1) of a zero-mean Gaussian input x ~ N(0, s2), token correlation r.

    No closed form exists (the logistic-normal integral), so the moments are computed numerically:
    mean E[f], second moment E[f^2] and, by Mehler's formula, the cross moment E[f(u) f(v)] =
    sum_n a_n(s2) r^n with a_n the squared Hermite coefficients of f(s z) (64 terms, the truncated
    tail added as tail * r^64 so the series is exact at r = 1). The same for the derivative
    f'(x) = sigmoid(x) (1 + x (1 - sigmoid(x))) gives the backward: var_g E[f'^2] and covariance
    cov_g E[f'(u) f'(v)]. Coefficients are cached per input variance (about a millisecond each);
    accuracy better than 1e-6 relative for s2 <= 10 and 2e-3 at s2 = 100. At unit input
    E[f] = 0.2066, E[f^2] = 0.3558, E[f'^2] = 0.3795.
    """

    def forward(self, x: Signal) -> Signal:
        return _signal(*self._fwd(x.mean, x.var, x.corr))

    def backward(self, x: Signal, g: Grad) -> Grad:
        return _grad(*self._bwd(x.mean, x.var, x.corr, g.var, g.corr))

    def _fwd(self, x_mean: float, x_var: float, x_corr: float) -> tuple[float, float, float]:
        if x_mean:
            _zero_mean("SiLU", x_mean, x_var)
        if x_var == 0:
            return 0.0, 0.0, 0.0
        mean, m2, af, tf = _silu_series(x_var)[:4]
        var = m2 - mean * mean
        cov = _mehler(af, tf, clip_corr(x_corr)) - mean * mean
        return mean, var, clip_corr(cov / var) if var > 0 else 0.0

    def _bwd(self, x_mean: float, x_var: float, x_corr: float, g_var: float, g_corr: float
             ) -> tuple[float, float]:
        if x_mean:
            _zero_mean("SiLU", x_mean, x_var)
        if x_var == 0:   # f'(0) = 1/2
            return 0.25 * g_var, g_corr
        dm2, ap, tp = _silu_series(x_var)[4:]
        var = g_var * dm2
        if var == 0:
            return 0.0, 0.0
        return var, clip_corr((g_corr * g_var) * _mehler(ap, tp, clip_corr(x_corr)) / var)

    def _gate_moments(self, var: float, corr: float) -> tuple[float, float, float, float]:
        """(E[f(u)^2], E[f(u) f(v)], E[f'(u)^2], E[f'(u) f'(v)]) (uncentred), see `GeLU`."""
        if var == 0:
            return 0.0, 0.0, 0.25, 0.25
        _mean, m2, af, tf, dm2, ap, tp = _silu_series(var)
        r = clip_corr(corr)
        return m2, _mehler(af, tf, r), dm2, _mehler(ap, tp, r)


@dataclass(frozen=True)
class GatedProduct:
    """h = act(a) * b for a gated MLP (SwiGLU: act = SiLU, GeGLU: act = GeLU).

    a (the gate pre-activation) and b (the up projection) are zero-mean Gaussians with their own
    variances and token correlations r_a, r_b, independent of each other (different weight
    matrices on the same input). With the uncentred kernels of the activation
    m2 = E[act(a)^2], K(r) = E[act(a_i) act(a_j)], m2' = E[act'(a)^2], K'(r) = E[act'(a_i) act'(a_j)]:

    * forward: mean 0 (E[b] = 0), variance m2 var_b, token covariance K(r_a) r_b var_b;
    * backward, for a gradient g at h (independent of a, b): g_a = g b act'(a) has variance
      var_g var_b m2' and covariance cov_g r_b var_b K'(r_a); g_b = g act(a) has variance var_g m2
      and covariance cov_g K(r_a).
    """

    activation: str = "silu"
    _act: object = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        acts = {"silu": SiLU, "gelu": GeLU}
        if self.activation not in acts:
            raise ValueError(f"activation must be one of 'silu', 'gelu', got {self.activation!r}")
        object.__setattr__(self, "_act", acts[self.activation]())

    def forward(self, a: Signal, b: Signal) -> Signal:
        return _signal(*self._fwd2((a.mean, a.var, a.corr), (b.mean, b.var, b.corr)))

    def backward(self, a: Signal, b: Signal, g: Grad) -> tuple[Grad, Grad]:
        """(gradient at a, gradient at b) for the gradient ``g`` at h."""
        ga, gb = self._bwd2((a.mean, a.var, a.corr), (b.mean, b.var, b.corr), g.var, g.corr)
        return _grad(*ga), _grad(*gb)

    def _fwd2(self, a: tuple[float, float, float], b: tuple[float, float, float]
              ) -> tuple[float, float, float]:
        if a[0]:
            _zero_mean("GatedProduct (gate)", a[0], a[1])
        if b[0]:
            _zero_mean("GatedProduct (up)", b[0], b[1])
        m2, k, _dm2, _dk = self._act._gate_moments(a[1], a[2])   # type: ignore[attr-defined]
        var = m2 * b[1]
        return 0.0, var, clip_corr(k * b[2] / m2) if var > 0 else 0.0

    def _bwd2(self, a: tuple[float, float, float], b: tuple[float, float, float], g_var: float,
              g_corr: float) -> tuple[tuple[float, float], tuple[float, float]]:
        m2, k, dm2, dk = self._act._gate_moments(a[1], a[2])   # type: ignore[attr-defined]
        g_cov = g_corr * g_var
        va = g_var * b[1] * dm2
        vb = g_var * m2
        ca = clip_corr(g_cov * b[2] * b[1] * dk / va) if va > 0 else 0.0
        cb = clip_corr(g_cov * k / vb) if vb > 0 else 0.0
        return (va, ca), (vb, cb)


@dataclass(frozen=True)
class LayerNorm:
    """Normalisation over d hidden units per token, without the affine part (the paper's Table 1, LayerNorm).

    Output mean 0, variance 1, covariance across hidden units of one token -1/(d-1) (`hidden_cov`).
    Token correlation: the mean cosine of two centred Gaussian vectors with per-coordinate
    correlation r in n = d-1 dimensions, r (1 - (1 - r^2)/(2n)) to first order in 1/n (the
    authors' r (1 - 1/d) is a simpler form; ours matches Monte Carlo better at small d, see
    tests). Input mean is removed. Gradient: var_g / var_x and the same correlation (the division
    is by the input *variance*, not the second moment).
    """

    d: int

    def __post_init__(self) -> None:
        _positive_int("d", self.d)
        if self.d < 2:
            raise ValueError(f"d must be >= 2 for LayerNorm, got {self.d!r}")

    @property
    def hidden_cov(self) -> float:
        """Covariance of two different hidden units of the same token at the output."""
        return -1.0 / (self.d - 1)

    def forward(self, x: Signal) -> Signal:
        return _signal(0.0, 1.0, self._corr(x.corr))

    def _corr(self, corr: float) -> float:
        """Output token correlation for an input correlation ``corr`` (mean 0, variance 1)."""
        r = clip_corr(corr)
        return clip_corr(r * (1.0 - (1.0 - r * r) / (2.0 * (self.d - 1))))

    def backward(self, x: Signal, g: Grad) -> Grad:
        return _grad(*self._bwd(x.var, g.var, g.corr))

    def _bwd(self, x_var: float, g_var: float, g_corr: float) -> tuple[float, float]:
        """Float-level `backward` (it needs only the input variance)."""
        if x_var <= 0:
            raise ValueError("LayerNorm.backward needs an input with var > 0")
        return g_var / x_var, g_corr


@dataclass(frozen=True)
class RMSNorm:
    """y = x / rms(x), rms(x) = sqrt(sum_k x_k^2 / d), over d hidden units per token; no affine part,
    no mean subtraction.

    Every token has sum_k y_k^2 = d, so E[y^2] = 1 exactly. Per hidden unit the input is
    x = mu + sigma z (z standard normal, token correlation r); write M = mu^2 + sigma^2,
    t = mu^2/M, u = sigma^2/M. To first order in 1/d (the second-order delta method on the per-token
    averages A = |x|^2/d, P = <x_i, x_j>/d, Q = mean_k x_k; Gaussian fourth moments give
    Var A = (4tu + 2u^2) M^2/d, Cov(P, A) = (2tu(1+r) + 2u^2 r) M^2/d, Cov(A_i, A_j) = (4tur + 2u^2r^2) M^2/d):

    * mean: mu/sqrt(M) (1 + delta), delta = (tu/2 - u^2/4)/d;
    * variance: 1 - mean^2 = u - 2t delta - t delta^2 (-> s2/(mu^2+s2) at large d);
    * E[y_i y_j] = c + [-Cov'(P, A) + (3/4) c Var' A + (1/4) c Cov'(A_i, A_j)]/d with c = t + r u and
      the primes the covariances above over M^2/d; covariance E[y_i y_j] - mean^2. For mu = 0 this is
      r (1 - (1 - r^2)/(2d)): the mean cosine of two Gaussian vectors, as `LayerNorm` with d for d-1.

    Backward: g_x = (g - (y.g) y/d)/rms(x), a projection that removes one of d directions. For a
    gradient g independent of x (variance v_g, correlation r_g): variance
    v_g (1 - 1/d) E[1/A] with E[1/A] = (1 + Var' A/d)/M, and covariance
    r_g v_g (1 - (2 - c^2)/d) E[1/sqrt(A_i A_j)] with E[1/sqrt(A_i A_j)] = (1 + (3 Var' A + Cov'(A_i, A_j))/(4d))/M
    (tr(P_i P_j) = d - 2 + cos^2 of the two tokens). For mu = 0: v_g (1 - 1/d)(1 + 2/d)/sigma^2 and the
    correlation r_g (1 - 3 (1 - r^2)/(2d)) to first order.
    """

    d: int

    def __post_init__(self) -> None:
        _positive_int("d", self.d)
        if self.d < 2:
            raise ValueError(f"d must be >= 2 for RMSNorm, got {self.d!r}")

    def forward(self, x: Signal) -> Signal:
        return _signal(*self._fwd(x.mean, x.var, x.corr))

    def backward(self, x: Signal, g: Grad) -> Grad:
        return _grad(*self._bwd(x.mean, x.var, x.corr, g.var, g.corr))

    def _corr(self, corr: float) -> float:
        """Output token correlation of a zero-mean input with correlation ``corr`` (mean 0, var 1)."""
        r = clip_corr(corr)
        return clip_corr(r * (1.0 - (1.0 - r * r) / (2.0 * self.d)))

    def _shares(self, mean: float, var: float) -> tuple[float, float, float]:
        m2 = var + mean * mean
        if not m2 > 0:
            raise ValueError("RMSNorm needs an input with var + mean^2 > 0")
        return m2, mean * mean / m2, var / m2

    def _fwd(self, mean: float, var: float, corr: float) -> tuple[float, float, float]:
        if mean == 0:
            if not var > 0:
                raise ValueError("RMSNorm needs an input with var + mean^2 > 0")
            return 0.0, 1.0, self._corr(corr)
        d = self.d
        _m2, t, u = self._shares(mean, var)
        r = clip_corr(corr)
        delta = (0.5 * t * u - 0.25 * u * u) / d
        out_mean = math.copysign(math.sqrt(t), mean) * (1.0 + delta)
        out_var = u - 2.0 * t * delta - t * delta * delta
        va, cpa, cab = 4.0 * t * u + 2.0 * u * u, 2.0 * t * u * (1.0 + r) + 2.0 * u * u * r, \
            4.0 * t * u * r + 2.0 * u * u * r * r
        c = t + r * u
        cov = r * u + (-cpa + 0.75 * c * va + 0.25 * c * cab) / d - 2.0 * t * delta - t * delta * delta
        if out_var <= 0:
            return out_mean, 0.0, 0.0
        return out_mean, out_var, clip_corr(cov / out_var)

    def _grad_factors(self, mean: float, var: float, corr: float) -> tuple[float, float]:
        """(variance gain, covariance gain) of the backward: var_in = var_g * first,
        cov_in = cov_g * second."""
        d = self.d
        m2, t, u = self._shares(mean, var)
        r = clip_corr(corr)
        va = 4.0 * t * u + 2.0 * u * u
        cab = 4.0 * t * u * r + 2.0 * u * u * r * r
        c = t + r * u
        gv = (1.0 - 1.0 / d) * (1.0 + va / d) / m2
        gc = (1.0 - (2.0 - c * c) / d) * (1.0 + (3.0 * va + cab) / (4.0 * d)) / m2
        return gv, gc

    def _bwd(self, mean: float, var: float, corr: float, g_var: float, g_corr: float
             ) -> tuple[float, float]:
        fv, fc = self._grad_factors(mean, var, corr)
        out = g_var * fv
        return out, clip_corr(g_corr * fc / fv) if out > 0 else 0.0


@dataclass(frozen=True)
class Embedding:
    """One embedding table of ``vocab_size`` rows, entries N(0, weight_var) (the paper's Zipf embedding correlation).

    The output of a lookup has mean 0, variance ``weight_var`` and token correlation equal to the
    probability that two different positions hold the same row, ``same_row_prob`` (default: the Zipf
    estimate zeta(2)/(ln V + gamma)^2). ``forward`` ignores its input (the input is discrete).

    ``backward`` gives the moments of the gradient of one *used table row*: a row that occurs m
    times in a sequence sums m position gradients, so its variance is m var_g (1 + (m-1) r_g) with
    the expected multiplicity m = 1 + (seq_len - 1) same_row_prob (an approximation: it uses the mean
    multiplicity, not its distribution). The correlation of two different rows is taken as 0.
    """

    vocab_size: int
    weight_var: float
    same_row_prob: float | None = None
    seq_len: int = 1

    def __post_init__(self) -> None:
        _positive_int("vocab_size", self.vocab_size)
        _positive_int("seq_len", self.seq_len)
        _nonneg("weight_var", self.weight_var)
        if self.same_row_prob is not None and not (0.0 <= self.same_row_prob <= 1.0):
            raise ValueError(f"same_row_prob must be in [0, 1], got {self.same_row_prob!r}")

    @property
    def row_share(self) -> float:
        if self.same_row_prob is not None:
            return self.same_row_prob
        if self.vocab_size < 2:
            return 1.0
        return min(1.0, (math.pi ** 2 / 6) / (math.log(self.vocab_size) + 0.5772156649) ** 2)

    def forward(self, x: Signal | None = None) -> Signal:
        return Signal(0.0, self.weight_var, self.row_share)

    def backward(self, x: Signal | None, g: Grad) -> Grad:
        m = 1.0 + (self.seq_len - 1) * self.row_share
        return Grad(m * g.var * (1.0 + (m - 1.0) * g.corr), 0.0)


def __getattr__(name: str) -> Any:
    # Softmax and Attention are defined in .attention; resolved lazily to avoid an import cycle.
    if name in ("Softmax", "Attention"):
        from . import attention

        return getattr(attention, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:  # the lazy re-exports of __getattr__, visible to linters and type checkers
    from .attention import Attention, Softmax

__all__ = ["Linear", "Dropout", "ReLU", "GeLU", "SiLU", "GatedProduct", "LayerNorm", "RMSNorm", "Embedding",
           "Softmax", "Attention", "relu_cov_factor", "gelu_moments", "gelu_cross_moment", "gelu_grad_moment",
           "gelu_grad_cross_moment", "silu_moments"]
