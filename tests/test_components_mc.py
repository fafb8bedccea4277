"""Component closed forms (deepscalelm.theory.components) against Monte Carlo, the paper's component-check protocol.

Every check samples fresh weights per run and Gaussian inputs with equicorrelated tokens. The
tolerance of a variance-like quantity is a model allowance plus 4 standard errors, var*sqrt(2/n_eff),
where n_eff counts the independent samples behind the estimate: for a token-shared (correlated)
component that is runs * d (one shared value per run and hidden unit), otherwise runs * L * d.
"""

from __future__ import annotations

import math

import pytest
import torch

from deepscalelm.theory.components import Dropout, LayerNorm, Linear
from deepscalelm.theory.moments import Grad, Signal
from deepscalelm.validate import checks
from deepscalelm.validate.protocol import calc_err, measure, sample_field

torch.set_num_threads(1)


def _tol(n_eff: int, allowance: float = 0.02) -> float:
    return allowance + 4.0 * math.sqrt(2.0 / n_eff)


def _assert_rows(rows, n_eff, allowance=0.02):
    tol = _tol(n_eff, allowance)
    for qty, actual, pred, pred_var in rows:
        err = calc_err(actual, pred, pred_var)
        assert err <= tol, (qty, actual, pred, err, tol)


@pytest.mark.parametrize("mu,rx,rg", [(0.1, 0.0, 0.0), (10.0, 2 / 3, 1 / 3), (1.0, 1 / 3, 2 / 3)])
def test_linear(mu, rx, rg):
    gen = torch.Generator().manual_seed(1)
    pt = dict(mu=mu, sx=1.0, rx=rx, mw=1.0, sg=1.0, rg=rg, d_in=96, d_out=64, L=32, runs=48)
    _assert_rows(checks.check_linear(pt, gen, torch.float64), n_eff=48 * 64)


def test_linear_variance_identity():
    lin = Linear(100, 50, 0.02)
    out = lin.forward(Signal(0.5, 2.0, 0.25))
    assert out.var == pytest.approx(100 * 0.02 * (2.0 + 0.25))
    assert out.corr == pytest.approx((0.25 * 2.0 + 0.25) / 2.25)
    g = lin.backward(Signal(0.5, 2.0, 0.25), Grad(3.0, 0.4))
    assert g.var == pytest.approx(50 * 0.02 * 3.0) and g.corr == pytest.approx(0.4)


@pytest.mark.parametrize("mu,p", [(0.0, 1 / 3), (10.0, 2 / 3), (-10.0, 0.0)])
def test_dropout(mu, p):
    gen = torch.Generator().manual_seed(2)
    pt = dict(mu=mu, sx=1.0, rx=2 / 3, sg=1.0, rg=1 / 3, p=p, d=64, L=32, runs=32)
    _assert_rows(checks.check_dropout(pt, gen, torch.float64), n_eff=32 * 64)


def test_dropout_correlation_identity():
    for p in (0.0, 0.1, 0.5):
        out = Dropout(p).forward(Signal(0.0, 1.0, 0.6))
        assert out.corr == pytest.approx((1 - p) * 0.6)
        assert Dropout(p).forward(Signal(2.0, 1.0, 0.0)).var == pytest.approx((1 + p * 4) / (1 - p))


@pytest.mark.parametrize("name", ["relu", "gelu"])
@pytest.mark.parametrize("sx,rx,rg", [(0.3162, 0.0, 0.8), (1.0, 0.4, 0.0), (3.1623, 0.8, 0.4)])
def test_activations(name, sx, rx, rg):
    gen = torch.Generator().manual_seed(3)
    pt = dict(sx=sx, rx=rx, sg=1.0, rg=rg, d=64, L=32, runs=64)
    _assert_rows(checks.CHECKS[name](pt, gen, torch.float64), n_eff=64 * 64)


@pytest.mark.parametrize("mu,rx,d", [(-10.0, 0.0, 64), (3.333, 0.8, 128)])
def test_layernorm(mu, rx, d):
    gen = torch.Generator().manual_seed(4)
    pt = dict(mu=mu, sx=3.1623, rx=rx, sg=1.0, rg=0.4, d=d, L=32, runs=32)
    rows = checks.check_layernorm(pt, gen, torch.float64)
    _assert_rows(rows, n_eff=32 * d)
    by = {q: (a, p) for q, a, p, _ in rows}
    assert by["x var"][0] == pytest.approx(1.0, abs=1e-9)            # exact identity
    # per token the outputs sum to 0 and their squares to d, so the mean product of two different
    # hidden units is exactly -1/(d-1) (the §7.1 measurement above also removes per-unit means)
    x = sample_field(8, 16, d, mu, 3.1623, rx, gen)
    y = torch.nn.functional.layer_norm(x, (d,), eps=1e-12)
    cross = (y.sum(-1) ** 2 - (y * y).sum(-1)) / (d * (d - 1))
    assert float(cross.max()) == pytest.approx(-1.0 / (d - 1), abs=1e-9)
    assert float(cross.min()) == pytest.approx(-1.0 / (d - 1), abs=1e-9)


def test_layernorm_identities():
    ln = LayerNorm(100)
    assert ln.forward(Signal(5.0, 9.0, 0.3)).var == 1.0
    assert ln.hidden_cov == pytest.approx(-1 / 99)
    assert ln.backward(Signal(5.0, 4.0, 0.3), Grad(2.0, 0.1)).var == pytest.approx(0.5)


def test_embedding_zipf_correlation():
    gen = torch.Generator().manual_seed(5)
    pt = dict(w=1.0, d=32, L=128, vocab=1000, runs=48)
    rows = checks.check_embedding(pt, gen, torch.float64)
    # the token correlation is a same-row probability (~0.03 here) estimated from runs*L*(L-1)
    # position pairs of shared tables; allowance 2% of the variance on the covariance
    _assert_rows(rows, n_eff=48 * 32)


def test_sampled_inputs_have_the_requested_moments():
    gen = torch.Generator().manual_seed(6)
    x = sample_field(64, 32, 64, 2.0, 1.5, 0.4, gen)
    m = measure(x)
    n_shared = 64 * 64
    assert m["mean"] == pytest.approx(2.0, abs=4 * 1.5 * math.sqrt(0.4 / n_shared + 0.6 / x.numel()))
    assert m["var"] == pytest.approx(2.25, rel=_tol(n_shared, 0.0))
    assert m["cov"] / m["var"] == pytest.approx(0.4, abs=_tol(n_shared, 0.0))
