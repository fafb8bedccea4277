"""RMSNorm, SiLU, the gated FFN (SwiGLU/GeGLU): closed forms, quadrature, Monte Carlo and `predict`.

Monte-Carlo tolerances follow tests/test_components_mc.py: a model allowance plus 4 standard errors
of a variance estimate, var * sqrt(2 / n_eff), with n_eff the independent samples behind it (runs * d:
token-shared and weight-shared values count once per run and hidden unit).
"""

from __future__ import annotations

import math

import pytest
import torch

from deepscalelm import ModelConfig, predict
from deepscalelm.theory.blocks import FFNBlock
from deepscalelm.theory.components import GatedProduct, GeLU, RMSNorm, SiLU, _reuse_moments, silu_moments
from deepscalelm.theory.moments import Grad, Signal
from deepscalelm.theory.naming import weight_shapes
from deepscalelm.theory.schemes import SCHEME_FUNCTIONS, dslm_ffn_variances, get_scheme
from deepscalelm.validate import checks
from deepscalelm.validate.protocol import calc_err

torch.set_num_threads(1)


def _tol(n_eff: int, allowance: float) -> float:
    return allowance + 4.0 * math.sqrt(2.0 / n_eff)


def _assert_rows(rows, n_eff, allowance=0.02):
    tol = _tol(n_eff, allowance)
    for qty, actual, pred, pred_var in rows:
        err = calc_err(actual, pred, pred_var)
        assert err <= tol, (qty, actual, pred, err, tol)


# ------------------------------------------------------------------------------------------ SiLU
def _silu_np(x):
    return x / (1.0 + torch.exp(-x))


def _grid_moment(fn, s2: float) -> float:
    """E[fn(x)], x ~ N(0, s2), by a fine Riemann sum in float64 (independent of the series code)."""
    z = torch.linspace(-12, 12, 240001, dtype=torch.float64)
    w = torch.exp(-0.5 * z * z) * (z[1] - z[0]) / math.sqrt(2 * math.pi)
    return float((w * fn(math.sqrt(s2) * z)).sum())


@pytest.mark.parametrize("s2", [0.1, 1.0, 10.0])
def test_silu_one_dimensional_moments(s2):
    mean, var = silu_moments(s2)
    m = _grid_moment(_silu_np, s2)
    m2 = _grid_moment(lambda x: _silu_np(x) ** 2, s2)
    assert mean == pytest.approx(m, rel=1e-9)
    assert var == pytest.approx(m2 - m * m, rel=1e-8)
    sig = lambda x: torch.sigmoid(x)
    dm2 = _grid_moment(lambda x: (sig(x) * (1 + x * (1 - sig(x)))) ** 2, s2)
    assert SiLU().backward(Signal(0.0, s2, 0.0), Grad(1.0, 0.0)).var == pytest.approx(dm2, rel=1e-8)


@pytest.mark.parametrize("s2,r", [(1.0, 0.5), (3.0, 0.9), (1.0, -0.6), (10.0, 0.3)])
def test_silu_correlation_map_against_2d_quadrature(s2, r):
    """Mehler series against a direct 2-D sum over (u, v) with correlation r."""
    z = torch.linspace(-9, 9, 1801, dtype=torch.float64)
    w = torch.exp(-0.5 * z * z) * (z[1] - z[0]) / math.sqrt(2 * math.pi)
    s = math.sqrt(s2)
    u, e = z[:, None], z[None, :]
    v = r * u + math.sqrt(1 - r * r) * e
    ww = w[:, None] * w[None, :]
    cross = float((ww * _silu_np(s * u) * _silu_np(s * v)).sum())
    mean, var = silu_moments(s2)
    out = SiLU().forward(Signal(0.0, s2, r))
    assert out.cov == pytest.approx(cross - mean * mean, abs=2e-6 * var)


def test_silu_limits_and_identities():
    silu = SiLU()
    assert silu.forward(Signal(0.0, 2.0, 1.0)).corr == pytest.approx(1.0, abs=1e-12)
    # small input: SiLU(x) ~ x/2, so var -> s2/4 and the gradient gain -> 1/4
    tiny = silu.forward(Signal(0.0, 1e-6, 0.3))
    assert tiny.var == pytest.approx(0.25e-6, rel=1e-3)
    assert silu.backward(Signal(0.0, 1e-6, 0.3), Grad(1.0, 0.0)).var == pytest.approx(0.25, rel=1e-3)
    with pytest.raises(ValueError, match="zero-mean"):
        silu.forward(Signal(1.0, 1.0, 0.0))


@pytest.mark.parametrize("sx,rx,rg", [(0.3162, 0.0, 0.8), (1.0, 0.4, 0.0), (3.1623, 0.8, 0.4)])
def test_silu_monte_carlo(sx, rx, rg):
    gen = torch.Generator().manual_seed(11)
    pt = dict(sx=sx, rx=rx, sg=1.0, rg=rg, d=64, L=32, runs=64)
    _assert_rows(checks.check_silu(pt, gen, torch.float64), n_eff=64 * 64)


# --------------------------------------------------------------------------------------- RMSNorm
def test_rmsnorm_zero_mean_matches_cosine_formula():
    rms = RMSNorm(64)
    out = rms.forward(Signal(0.0, 4.0, 0.5))
    assert (out.mean, out.var) == (0.0, 1.0)
    assert out.corr == pytest.approx(0.5 * (1 - 0.75 / 128))
    g = rms.backward(Signal(0.0, 4.0, 0.5), Grad(2.0, 0.3))
    assert g.var == pytest.approx(2.0 / 4.0 * (1 - 1 / 64) * (1 + 2 / 64))
    assert g.corr == pytest.approx(0.3 * (1 - (2 - 0.25) / 64) * (1 + (3 + 0.25) / 128) / (1 + 1 / 64 - 2 / 64 ** 2),
                                   rel=1e-12)


def test_rmsnorm_large_d_limits_and_continuity():
    mu, s2, r = 1.5, 0.8, 0.3
    big = RMSNorm(10 ** 8).forward(Signal(mu, s2, r))
    assert big.mean == pytest.approx(mu / math.sqrt(mu * mu + s2), rel=1e-7)
    assert big.var == pytest.approx(s2 / (mu * mu + s2), rel=1e-7)
    assert big.corr == pytest.approx(r, rel=1e-6)
    rms = RMSNorm(64)
    a, b = rms.forward(Signal(0.0, s2, r)), rms.forward(Signal(1e-9, s2, r))
    assert b.var == pytest.approx(a.var, rel=1e-9) and b.corr == pytest.approx(a.corr, rel=1e-9)
    assert rms.backward(Signal(1e-9, s2, r), Grad(1.0, 0.5)).var == pytest.approx(
        rms.backward(Signal(0.0, s2, r), Grad(1.0, 0.5)).var, rel=1e-9)


def test_rmsnorm_bad_input():
    with pytest.raises(ValueError, match="d must be >= 2"):
        RMSNorm(1)
    with pytest.raises(ValueError, match="var"):
        RMSNorm(8).forward(Signal(0.0, 0.0, 0.0))


@pytest.mark.parametrize("mu,sx,rx,d", [(0.0, 3.1623, 0.0, 64), (0.0, 0.3162, 0.8, 128), (-10.0, 3.1623, 0.4, 64),
                                        (3.333, 0.3162, 0.8, 96)])
def test_rmsnorm_monte_carlo(mu, sx, rx, d):
    gen = torch.Generator().manual_seed(12)
    pt = dict(mu=mu, sx=sx, rx=rx, sg=1.0, rg=0.5, d=d, L=32, runs=48)
    rows = checks.check_rmsnorm(pt, gen, torch.float64)
    _assert_rows(rows, n_eff=48 * d)
    got = {q: a for q, a, _p, _v in rows}
    assert got["x var"] + got["x mean"] ** 2 == pytest.approx(1.0, abs=1e-9)   # E[y^2] = 1 exactly


# ---------------------------------------------------------------------------------- gated FFN
def test_gated_product_identities():
    """Forward var m2 var_b, covariance K(r_a) r_b var_b; backward paths as documented."""
    gate = GatedProduct("gelu")
    a, b = Signal(0.0, 1.5, 0.4), Signal(0.0, 2.0, 0.6)
    m2, k, dm2, dk = GeLU()._gate_moments(1.5, 0.4)
    h = gate.forward(a, b)
    assert h.mean == 0.0 and h.var == pytest.approx(m2 * 2.0)
    assert h.cov == pytest.approx(k * 0.6 * 2.0)
    ga, gb = gate.backward(a, b, Grad(3.0, 0.5))
    assert ga.var == pytest.approx(3.0 * 2.0 * dm2) and ga.cov == pytest.approx(1.5 * 0.6 * 2.0 * dk)
    assert gb.var == pytest.approx(3.0 * m2) and gb.cov == pytest.approx(1.5 * k)


@pytest.mark.parametrize("act,base", [("swiglu", SiLU()), ("geglu", GeLU())])
def test_gated_ffn_gain_ratio(act, base):
    """The block's backward/forward variance gain ratio is 1 + s_a^2 m2'/m2 (DSLM docstring), plus
    the O(1/d) weight-reuse terms (docs/theory.md)."""
    x = Signal(0.0, 1.0, 0.0)
    m2, _k, dm2, _dk = base._gate_moments(1.0, 0.0)
    e_self, e_cross = _reuse_moments("silu" if act == "swiglu" else "gelu", 1.0)
    for d in (64, 4096):
        f = 4 * d
        blk = FFNBlock(d, f, 1.0 / d, 1.0 / f, act, 0.0, w3_var=1.0 / d)
        fwd = blk.forward(x).var
        bwd = blk.backward(x, Grad(1.0, 0.0)).var
        assert fwd == pytest.approx(m2)
        assert bwd == pytest.approx(dm2 + m2 + (e_self - dm2 + 2 * e_cross) / d)
        assert 2.0 < bwd / fwd < 2.1 + 2.0 / d
    assert 0.0 < (e_self - dm2 + 2 * e_cross) / (dm2 + m2) < 2.0   # the reuse terms are O(1/d), positive


def test_ffn_block_arguments():
    with pytest.raises(ValueError, match="w3_var"):
        FFNBlock(8, 32, 0.1, 0.1, "swiglu", 0.0)
    with pytest.raises(ValueError, match="activation must be one of"):
        FFNBlock(8, 32, 0.1, 0.1, "tanh", 0.0)
    # relu/gelu keep their positional signature and ignore w3_var's absence
    relu = FFNBlock(8, 32, 0.1, 0.1, "relu", 0.1)
    assert relu.forward(Signal(0.0, 1.0, 0.0)).var == pytest.approx(8 * 0.1 * 32 * 0.1 * 0.5 / 0.9)
    silu = FFNBlock(8, 32, 0.125, 0.1, "silu", 0.0)
    mean, var = silu_moments(1.0)
    assert silu.forward(Signal(0.0, 1.0, 0.0)).var == pytest.approx(32 * 0.1 * (var + mean * mean))


@pytest.mark.parametrize("name", ["ffn_swiglu", "ffn_geglu"])
@pytest.mark.parametrize("m1,rx,p", [(1.0, 0.0, 0.0), (0.5, 0.6, 1 / 3), (2.0, 0.3, 0.1)])
def test_gated_ffn_monte_carlo(name, m1, rx, p):
    gen = torch.Generator().manual_seed(13)
    pt = dict(sx=1.0, rx=rx, m1=m1, m3=1.0, m2=1.0, p=p, sg=1.0, rg=0.5, d=64, d_ff=128, L=16, runs=64)
    # allowance: the O(1/d) token-overlap term of the covariance the block neglects (docs/theory.md)
    _assert_rows(checks.CHECKS[name](pt, gen, torch.float64), n_eff=64 * 64, allowance=0.03)


# ------------------------------------------------------------------------- predict and schemes
def test_predict_refuses_uncovered_fields():
    with pytest.raises(ValueError, match="together with position='rope' is not covered"):
        predict(ModelConfig(n_layers=2, position="rope", qk_norm="rmsnorm"))
    for kw in (dict(position="none"), dict(n_heads=4, n_kv_heads=2), dict(qk_norm="rmsnorm"),
               dict(qk_norm="layernorm"), dict(n_heads=4, n_kv_heads=4), dict(position="rope"),
               dict(position="rope", n_heads=4, n_kv_heads=2)):
        predict(ModelConfig(n_layers=2, **kw))   # covered (tests/test_theory_gqa_qknorm.py, test_theory_rope.py)


@pytest.mark.parametrize("name", sorted(SCHEME_FUNCTIONS))
def test_every_scheme_covers_the_up_projection(name):
    cfg = ModelConfig(n_layers=2, activation="swiglu", norm="post" if name == "deepnet" else "pre")
    names = weight_shapes(cfg)
    assert "layers.1.ffn.fc3.weight" in names and names["layers.1.ffn.fc3.weight"] == (cfg.ffn_dim, cfg.d_model)
    sch = get_scheme(cfg, name)
    assert set(sch.weight_var) == set(names)
    assert "fc3" not in "".join(weight_shapes(ModelConfig(n_layers=2)))


@pytest.mark.parametrize("act", ["silu", "swiglu", "geglu"])
@pytest.mark.parametrize("norm_type", ["layernorm", "rmsnorm"])
def test_dslm_keeps_unit_forward_moments(act, norm_type):
    cfg = ModelConfig(n_layers=12, activation=act, norm_type=norm_type, arch="encoder", dropout=0.1)
    traj = predict(cfg)
    for rec in traj.to_records():
        if rec["block"] == "ffn":
            assert rec["block_var"] == pytest.approx(1.0, rel=1e-9)
        if rec["block"] != "embedding":
            assert rec["var"] == pytest.approx(1.0, rel=1e-6)
    wv = dslm_ffn_variances(cfg)
    assert ("fc3" in wv) == cfg.gated


def test_rmsnorm_and_layernorm_agree_at_large_width():
    """At large d (and zero-mean streams) the two norms have the same moments, pooled and causal."""
    for positional in (True, False):
        kw = dict(n_layers=6, d_model=4096, n_heads=8, seq_len=24, scheme="xavier")
        a = predict(ModelConfig(**kw), positional=positional).to_records()
        b = predict(ModelConfig(norm_type="rmsnorm", **kw), positional=positional).to_records()
        for ra, rb in zip(a, b, strict=True):
            for key in ("var", "corr", "grad_var"):
                assert rb[key] == pytest.approx(ra[key], rel=5e-3, abs=1e-6), (positional, ra, rb)


def test_rmsnorm_changes_small_width_prediction():
    kw = dict(n_layers=6, d_model=32, n_heads=4, seq_len=24, scheme="xavier")
    a = predict(ModelConfig(**kw)).to_records()
    b = predict(ModelConfig(norm_type="rmsnorm", **kw)).to_records()
    assert any(abs(ra["grad_var"] - rb["grad_var"]) > 1e-3 * ra["grad_var"] for ra, rb in zip(a, b, strict=True))


def test_gated_ffn_reuse_terms_seen_by_monte_carlo():
    """At d = 32 the weight-reuse terms raise the input-gradient variance by ~4 %: the mean of 16
    independent Monte-Carlo estimates agrees with the corrected prediction within 3 standard errors
    and is farther from the prediction without them."""
    pt = dict(sx=1.0, rx=0.0, m1=1.0, m3=1.0, m2=1.0, p=0.0, sg=1.0, rg=0.0, d=32, d_ff=96, L=16, runs=64)
    ratios = []
    for seed in range(16):
        rows = checks.check_ffn_swiglu(pt, torch.Generator().manual_seed(100 + seed), torch.float64)
        ratios.append(next(a / p for q, a, p, _v in rows if q == "g var"))
    mean = sum(ratios) / len(ratios)
    se = math.sqrt(sum((r - mean) ** 2 for r in ratios) / (len(ratios) - 1) / len(ratios))
    blk = FFNBlock(32, 96, 1 / 32, 1 / 96, "swiglu", 0.0, w3_var=1 / 32)
    x = Signal(0.0, 1.0, 0.0)
    full = blk.backward(x, Grad(1.0, 0.0)).var
    a, b, _h, _c = blk._trace(x)[1]
    lead = full - blk._reuse_var(a, b, 32 / 96)
    assert abs(mean - 1.0) < 3 * se + 0.005, (mean, se)
    assert abs(mean * full / lead - 1.0) > abs(mean - 1.0)
