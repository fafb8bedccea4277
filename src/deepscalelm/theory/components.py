"""Closed-form moments of every transformer component (the paper's Table 1).

Each component has ``forward(x: Signal) -> Signal`` (moments of the output given the input's) and
``backward(x: Signal, g: Grad) -> Grad`` (moments of the gradient at the input, given the forward
input ``x`` and the gradient ``g`` arriving at the output). Assumptions (the paper's Gaussian input model): for each hidden
unit the L token values are jointly Gaussian and exchangeable (mean mu, variance sigma^2, pairwise
correlation r); hidden units are independent; weights are i.i.d. zero-mean normal and independent of
the inputs; the incoming gradient is independent of the forward activations.

`Softmax` and `Attention` live in `deepscalelm.theory.attention` and are re-exported here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
        a = s2 / (1.0 + s2)
        rs = r * s2
        cov = (s2 / 4.0) * (r + (2.0 / math.pi) * r * math.asin(r * a)
                            + (2.0 / math.pi) * s2 * (s2 * (1.0 - r * r) + (1.0 + r * r))
                            / ((s2 + 1.0) * math.sqrt((s2 + 1.0) ** 2 - rs ** 2))) - mean ** 2
        return mean, var, clip_corr(cov / var) if var > 0 else 0.0

    def _bwd(self, x_mean: float, x_var: float, x_corr: float, g_var: float, g_corr: float
             ) -> tuple[float, float]:
        if x_mean:
            _zero_mean("GeLU", x_mean, x_var)
        s2, r = x_var, clip_corr(x_corr)
        a = s2 / (1.0 + s2)
        gain = 0.5 + (-math.acos(a) + a * (5.0 * s2 + 3.0) / (1.0 + 2.0 * s2) ** 1.5) / _TWO_PI
        var = g_var * gain
        if var == 0:
            return 0.0, 0.0
        rs, ra = r * s2, r * a
        cov_gain = 0.5 + (-math.acos(ra) + ra * ((s2 + 1.0) * (2.0 * s2 + 3.0) - 2.0 * rs ** 2)
                          / ((s2 + 1.0) ** 2 - rs ** 2) ** 1.5) / _TWO_PI
        return var, clip_corr((g_corr * g_var) * cov_gain / var)   # g.cov


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


def __getattr__(name: str):
    # Softmax and Attention are defined in .attention; resolved lazily to avoid an import cycle.
    if name in ("Softmax", "Attention"):
        from . import attention

        return getattr(attention, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Linear", "Dropout", "ReLU", "GeLU", "LayerNorm", "Embedding", "Softmax", "Attention",
           "relu_cov_factor", "gelu_moments"]
