"""Large logit variance: the softmax quadrature, the attention forms built on it, the per-record
validity flag of `predict`, the clear errors that replace the internal nan crash, and `dslm predict`'s
warning line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from deepscalelm import ModelConfig, predict
from deepscalelm.cli import main
from deepscalelm.records import Record, Trajectory
from deepscalelm.theory import softmax_quad as sq
from deepscalelm.theory.attention import Attention, LogitVarianceError, Softmax, logit_var_note, softmax_masses
from deepscalelm.theory.moments import Grad, Signal


def _softmax_mc(n: int, v: float, samples: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((samples, n)) * math.sqrt(v)
    p = np.exp(x - x.max(axis=1, keepdims=True))
    return x, p / p.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------------ quadrature
def test_quadrature_exact_limits():
    s, c = sq.masses_quad(np.array([1, 2, 64]), 20.0)
    assert s[0] == pytest.approx(1.0, abs=1e-9) and c[0] == pytest.approx(1.0, abs=1e-9)
    # n = 2: p = logistic(s1 - s2), s1 - s2 ~ N(0, 2v); dense trapezoid reference over z
    z = np.linspace(-12.0, 12.0, 48001)
    w = np.exp(-0.5 * z * z)
    p = 1.0 / (1.0 + np.exp(-math.sqrt(2 * 20.0) * z))
    ref = float(w @ (p ** 2 + (1 - p) ** 2)) / float(w.sum())
    assert s[1] == pytest.approx(ref, rel=1e-6)
    # small v: the uniform softmax plus the first-order correction S_n ~ (1 + v (1 - 1/n)) / n
    s_small = sq.masses_quad(64, 0.01)[0][0]
    assert s_small == pytest.approx((1 + 0.01 * (1 - 1 / 64)) / 64, rel=2e-3)


@pytest.mark.parametrize("v", [3.5, 13.0])
def test_quadrature_against_monte_carlo(v):
    n = 16
    x, p = _softmax_mc(n, v, 100_000)
    s, c = sq.masses_quad(n, v)
    assert s[0] == pytest.approx(float((p ** 2).sum(1).mean()), rel=0.01)
    assert c[0] == pytest.approx(float((p ** 3).sum(1).mean()), rel=0.015)
    assert sq.logit_mean_sq(n, v)[0] == pytest.approx(float(((p * x).sum(1) ** 2).mean()) / v, rel=0.015)
    delta = np.random.default_rng(1).standard_normal(x.shape)
    jac = ((p ** 2) * (delta - (p * delta).sum(1, keepdims=True)) ** 2).sum(1).mean()
    assert sq.jacobian_mass_quad(n, v)[0] == pytest.approx(float(jac), rel=0.02)


def test_closure_kept_below_threshold_and_continuous_above():
    # within the closure's range softmax_masses is the log-normal closure, bit for bit
    assert softmax_masses(16, 2.0) == softmax_masses(16, 2.0)
    assert sq.quad_weight(sq.CLOSURE_MAX_VAR) == 0.0 and sq.quad_weight(sq.QUAD_FROM_VAR) == 1.0
    eps = 1e-7
    for v in (sq.CLOSURE_MAX_VAR, sq.QUAD_FROM_VAR):
        lo, hi = softmax_masses(16, v - eps), softmax_masses(16, v + eps)
        assert hi[0] == pytest.approx(lo[0], rel=1e-4) and hi[1] == pytest.approx(lo[1], rel=1e-4)
    # the closure over-estimates S at large v; the quadrature saturates below 1
    assert softmax_masses(64, 20.0)[0] < 0.6 < math.exp(20.0) / 64


def test_pattern_factor_bounds():
    assert sq.pattern_corr_factor(0.5, 1.5, 64, 0.1) == math.exp(0.75)
    assert sq.pattern_corr_factor(0.0, 20.0, 64, 0.5) == pytest.approx(1.0)
    assert sq.pattern_corr_factor(1.0, 20.0, 64, 0.5) == pytest.approx(32.0)   # n S_n (Cauchy-Schwarz bound)


# ------------------------------------------------------------------------ components
def test_softmax_component_large_v_against_monte_carlo():
    L, v = 300, 6.5
    _x, p = _softmax_mc(L, v, 4000, seed=3)
    sm = Softmax(L)
    f = sm.forward(Signal(0.0, v, 0.0))
    assert f.var == pytest.approx(float(p.var()), rel=0.05)
    g = np.random.default_rng(4).standard_normal(p.shape)
    gx = p * (g - (p * g).sum(1, keepdims=True))
    assert sm.backward(Signal(0.0, v, 0.0), Grad(1.0, 0.0)).var == pytest.approx(float(gx.var()), rel=0.08)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_large_logit_against_monte_carlo(causal):
    """Logit variance 13 at d 64 (output variance was over-predicted 4-6x before the quadrature
    forms; the gradient under-predicted 30-60x)."""
    torch = pytest.importorskip("torch")
    from deepscalelm.validate.checks import _attention_mc, logit_grid

    pt = next(p for p in logit_grid("attention") if p["logit_var"] == 13.0 and p["L"] == 16 and p["rx"] == 0.5)
    m = _attention_mc(pt, torch.Generator().manual_seed(5), torch.float64, causal)
    di = pt["d_in"]
    head = Attention(di, pt["d_k"], pt["L"], pt["mqk"] ** 2 / di, pt["mqk"] ** 2 / di, 1.0 / di, causal=causal)
    x = Signal(0.0, 1.0, pt["rx"])
    assert head.forward(x).var == pytest.approx(m["y"]["var"], rel=0.1)
    assert head.backward(x, Grad(1.0, 0.0)).var == pytest.approx(m["gx"]["var"], rel=0.1)


def test_attention_large_but_finite_logit_variance_is_computed():
    head = Attention(64, 64, 16, 1.0, 1.0, 1.0 / 64)   # sigma_s^2 = 4096: computed, finite
    f = head.forward(Signal(0.0, 1.0, 0.0))
    assert math.isfinite(f.var) and 0.0 < f.var < 10.0
    big = Attention(64, 64, 16, 3.0, 3.0, 1.0 / 64)    # sigma_s^2 = 36864 > MAX_LOGIT_VAR
    with pytest.raises(LogitVarianceError, match="exceeds 10000"):
        big.forward(Signal(0.0, 1.0, 0.0))


# ------------------------------------------------------------------------ predict
def _big_logit_config(**kw) -> ModelConfig:
    base = dict(arch="decoder", norm="pre", scheme="normal", std=0.42, d_model=64, n_heads=1, n_layers=12,
                seq_len=64)
    base.update(kw)
    return ModelConfig(**base)


def test_predict_no_longer_crashes_at_logit_variance_130():
    """Used to raise `ValueError: var must be a finite number ..., got nan` (positional backward)."""
    traj = predict(_big_logit_config())
    assert 100 < traj.meta["max_logit_var"] < 140
    assert all(math.isfinite(r.var) and math.isfinite(r.grad_var) for r in traj)


def test_predict_flags_and_summary():
    traj = predict(_big_logit_config())
    attn = traj.select(block="attn")
    assert len(attn) == 12 and all(r.valid is False for r in attn)
    assert all(r.valid is True for r in traj if r.block != "attn")
    lines = traj.validity()
    assert len(lines) == 1 and "logit variance" in lines[0] and "layers 1-12" in lines[0]
    assert len(traj.invalid()) == 12
    # a DSLM model (logit variance ~1) has no warning and every record valid
    ok = predict(ModelConfig(arch="decoder", n_layers=4, d_model=64, n_heads=2, seq_len=32))
    assert ok.validity() == [] and all(r.valid is True for r in ok)


def test_validity_note_ranges():
    assert logit_var_note(1.0) is None and logit_var_note(6.5) is None and logit_var_note(20.0) is None
    assert "closure" in logit_var_note(2.3)
    assert "mix" in logit_var_note(2.8)
    assert "Monte Carlo" in logit_var_note(50.0)


def test_predict_refuses_hard_argmax_with_clear_message():
    with pytest.raises(ValueError, match=r"predict \(arch=decoder.*logit variance .* exceeds 10000"):
        predict(_big_logit_config(std=3.0, n_layers=2))


def test_backward_overflow_names_the_cause():
    from deepscalelm.theory import model as M

    def overflowing():
        raise ValueError("var must be a finite number in [0.0, inf], got nan")

    with pytest.raises(ValueError, match="overflows float64.*logit variance .* is 125"):
        M._backward(_big_logit_config(), "", overflowing, 125.0)
    with pytest.raises(ValueError, match="unrelated"):   # other errors pass through unchanged
        M._backward(_big_logit_config(), "", lambda: (_ for _ in ()).throw(ValueError("unrelated")), 1.0)


def test_valid_field_round_trips_and_measured_default():
    traj = predict(_big_logit_config(n_layers=2))
    back = Trajectory.from_json(traj.to_json())
    assert [r.valid for r in back] == [r.valid for r in traj]
    assert back.validity() == traj.validity()
    assert "valid" in traj.to_csv().splitlines()[0].split(",")
    assert Record("", 0, "embedding", 0.0, 1.0, 0.0, 1.0, 0.0).valid is None


# ------------------------------------------------------------------------ CLI
def test_cli_predict_warns_and_marks_rows(capsys):
    args = ["predict", "--arch", "decoder", "--scheme", "normal", "--std", "0.42", "--d-model", "64",
            "--n-heads", "1", "--n-layers", "3", "--seq-len", "32", "--every", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert any(line.startswith("warning: attention logit variance") for line in out.splitlines())
    assert sum(line.rstrip().endswith("!") for line in out.splitlines() if " attn " in line) == 3
    # machine-readable output on stdout: the warning goes to stderr
    assert main(args + ["--json", "-"]) == 0
    captured = capsys.readouterr()
    payload = json.loads(captured.out)
    assert payload["meta"]["warnings"] and "warning:" in captured.err
    assert [r["valid"] for r in payload["records"] if r["block"] == "attn"] == [False] * 3


def test_cli_predict_clean_config_has_no_warning(capsys):
    assert main(["predict", "--arch", "decoder", "--n-layers", "2", "--d-model", "32", "--n-heads", "2",
                 "--seq-len", "16"]) == 0
    out = capsys.readouterr().out
    assert "warning:" not in out and "!" not in out


# ------------------------------------------------------------------------ validation grid
def test_logit_grid():
    from deepscalelm.validate import grid_points

    pts = grid_points("attention", "logit")
    assert sorted({p["logit_var"] for p in pts}) == [2.56, 3.5, 6.5, 13.0, 20.0]
    assert all((1 - p["rx"]) * p["mqk"] ** 4 == pytest.approx(p["logit_var"]) for p in pts)
    with pytest.raises(ValueError, match="grid 'logit' covers"):
        grid_points("linear", "logit")
