"""Exact identities of the component formulas and agreement with direct numerical integration.

Monte-Carlo agreement over the authors' grids is in test_components_mc.py; here each formula is
checked against quantities that can be computed to high accuracy without sampling.
"""

import math

import numpy as np
import pytest

from deepscalelm.theory import Grad, Signal
from deepscalelm.theory.components import Dropout, Embedding, GeLU, LayerNorm, Linear, ReLU


def test_linear_variance_and_correlation():
    x = Signal(mean=0.5, var=2.0, corr=0.3)
    lin = Linear(64, 32, 0.01)
    y = lin.forward(x)
    assert y.mean == 0
    assert y.var == pytest.approx(64 * 0.01 * (2.0 + 0.25))
    assert y.corr == pytest.approx((0.3 * 2.0 + 0.25) / 2.25)
    g = lin.backward(x, Grad(3.0, 0.2))
    assert g.var == pytest.approx(32 * 0.01 * 3.0) and g.corr == pytest.approx(0.2)


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5])
def test_dropout_scales_correlation_by_keep_probability(p):
    x = Signal(0.0, 1.7, 0.4)
    y = Dropout(p).forward(x)
    assert y.var == pytest.approx(1.7 / (1 - p))
    assert y.corr == pytest.approx((1 - p) * 0.4)
    xm = Signal(2.0, 1.0, 0.4)
    assert Dropout(p).forward(xm).var == pytest.approx((1.0 + p * 4.0) / (1 - p))
    g = Dropout(p).backward(x, Grad(1.0, 0.5))
    assert g.var == pytest.approx(1 / (1 - p)) and g.corr == pytest.approx(0.5 * (1 - p))


def test_layernorm_identities():
    ln = LayerNorm(100)
    y = ln.forward(Signal(3.0, 4.0, 0.5))
    assert y.mean == 0 and y.var == 1.0
    assert ln.hidden_cov == pytest.approx(-1 / 99)
    g = ln.backward(Signal(3.0, 4.0, 0.5), Grad(2.0, 0.1))
    assert g.var == pytest.approx(0.5) and g.corr == pytest.approx(0.1)


def _expect_2d(f, r, n=1200, lim=9.0):
    """E[f(u, v)] for standard normals with correlation r, on a fine grid without a node at 0 (error << 1e-3)."""
    t = np.linspace(-lim, lim, n)
    w = np.exp(-t * t / 2)
    w = w / w.sum()
    u = t[:, None]
    v = r * t[:, None] + math.sqrt(1 - r * r) * t[None, :]
    return float((w[:, None] * w[None, :] * f(u, v)).sum())


def _phi_cdf(x):
    from scipy.special import ndtr

    return ndtr(x)


@pytest.mark.parametrize("s2", [0.1, 1.0, 9.0])
@pytest.mark.parametrize("r", [0.0, 0.4, 0.8])
def test_activation_moments_against_quadrature(s2, r):
    s = math.sqrt(s2)
    acts = {
        "relu": (ReLU(), lambda z: np.maximum(z, 0), lambda z: (z > 0).astype(float)),
        "gelu": (GeLU(), lambda z: z * _phi_cdf(z),
                 lambda z: _phi_cdf(z) + z * np.exp(-z * z / 2) / math.sqrt(2 * math.pi)),
    }
    for comp, f, fp in acts.values():
        out = comp.forward(Signal(0.0, s2, r))
        mean = _expect_2d(lambda u, v, f=f: f(s * u), 0.0)
        m2 = _expect_2d(lambda u, v, f=f: f(s * u) ** 2, 0.0)
        cross = _expect_2d(lambda u, v, f=f: f(s * u) * f(s * v), r)
        assert out.mean == pytest.approx(mean, rel=1e-3, abs=1e-9)
        assert out.var == pytest.approx(m2 - mean ** 2, rel=1e-3)
        assert out.corr * out.var == pytest.approx(cross - mean ** 2, rel=2e-3, abs=1e-6)
        g = comp.backward(Signal(0.0, s2, r), Grad(2.0, 0.5))
        d2 = _expect_2d(lambda u, v, fp=fp: fp(s * u) ** 2, 0.0)
        dcross = _expect_2d(lambda u, v, fp=fp: fp(s * u) * fp(s * v), r)
        assert g.var == pytest.approx(2.0 * d2, rel=2e-3)
        assert g.corr * g.var == pytest.approx(2.0 * 0.5 * dcross, rel=3e-3, abs=1e-6)


def test_gelu_reference_values_at_unit_input():
    # the paper's Table 1, GeLU: mean 0.28209, variance 0.34564, backward gain 0.45585
    y = GeLU().forward(Signal(0.0, 1.0, 0.0))
    assert y.mean == pytest.approx(0.28209, abs=1e-5)
    assert y.var == pytest.approx(0.34564, abs=1e-5)
    assert GeLU().backward(Signal(0.0, 1.0, 0.0), Grad(1.0, 0.0)).var == pytest.approx(0.45585, abs=1e-5)


def test_activations_require_zero_mean_input():
    with pytest.raises(ValueError, match="zero-mean"):
        ReLU().forward(Signal(1.0, 1.0, 0.0))


def test_embedding_correlation_is_row_share():
    e = Embedding(256, 0.5, same_row_prob=0.07, seq_len=64)
    y = e.forward()
    assert y.var == 0.5 and y.corr == pytest.approx(0.07)
    assert e.backward(None, Grad(1.0, 0.0)).var == pytest.approx(1 + 63 * 0.07)


@pytest.mark.parametrize("bad", [
    lambda: Signal(0.0, -1.0, 0.0), lambda: Signal(0.0, 1.0, 1.5), lambda: Grad(-2.0, 0.0),
    lambda: Dropout(1.0), lambda: Linear(0, 3, 1.0), lambda: Linear(3, 3, -1.0), lambda: LayerNorm(1),
])
def test_bad_arguments_raise_value_error(bad):
    with pytest.raises(ValueError):
        bad()
