"""Causal stacks: the position-resolved backward pass (`deepscalelm.theory.positional`).

Monte Carlo checks use small stacks (d 32, 2 heads, L 16, float64) and several weight draws; the
tolerance of each comparison is a model tolerance plus 3 standard errors of the Monte Carlo mean
(estimated from the spread over weight draws).
"""

import math

import numpy as np
import pytest
import torch

from deepscalelm import ModelConfig, predict
from deepscalelm.theory import positional as P
from deepscalelm.theory.blocks import AttentionBlock, FFNBlock, ResidualMerge
from deepscalelm.theory.components import LayerNorm
from deepscalelm.theory.model import _Step, backward_stack
from deepscalelm.theory.moments import Grad, Signal

D, H, L = 32, 2, 16
QKV = 2.0 / (D + D // H)       # the authors' xavier baseline
O_VAR = 1.0 / D


@pytest.mark.parametrize("L_, r, rg, p", [(16, 0.5, 0.3, 0.0), (64, 0.84, 0.0, 0.1), (33, 0.2, 0.7, 0.1)])
def test_exchangeable_gradient_pools_to_the_pooled_formula(L_, r, rg, p):
    b = AttentionBlock(64, 4, L_, 1 / 64, 1 / 64, 0.02, 0.03, attn_dropout=p, dropout=p, causal=True)
    x, g = Signal(0.0, 1.0, r), Grad(1.3, rg)
    ref = b.backward(x, g)
    new = P.pooled(P._attention_backward(b, x, P.exchangeable(g, L_)))
    # the pooled engine interpolates the window sums beyond n = 16; here every window is exact
    assert new.var == pytest.approx(ref.var, rel=1e-3)
    assert new.corr == pytest.approx(ref.corr, abs=1e-3)
    assert P.attention_position_var(b, x).mean() == pytest.approx(b.forward(x).var, rel=1e-3)


def test_window_masses_match_the_scalar_closure():
    from deepscalelm.theory.attention import softmax_masses

    s, c = P.window_masses(40, 0.7)
    for n in (1, 2, 5, 17, 40):
        assert (s[n - 1], c[n - 1]) == pytest.approx(softmax_masses(n, 0.7), rel=1e-12)


# ----------------------------------------------------------------------------------- Monte Carlo
def _mc_stack(kinds, norm, r0, depth, seeds=6, batch=48):
    """Per weight draw: pooled grad var and corr at the stack input, per-position grad var there."""
    torch.set_num_threads(1)
    pre = norm == "pre"
    out = []
    for seed in range(seeds):
        gen = torch.Generator().manual_seed(seed)

        def w(shape, var, gen=gen):
            return torch.randn(*shape, generator=gen, dtype=torch.float64) * math.sqrt(var)

        layers = []
        for _ in range(depth):
            for kind in kinds:
                if kind == "attn":
                    layers.append(("attn", [w((D, D), QKV) for _ in range(3)] + [w((D, D), O_VAR)]))
                else:
                    layers.append(("ffn", [w((D, 4 * D), 2 / (5 * D)), w((4 * D, D), 2 / (5 * D))]))
        x = (math.sqrt(r0) * torch.randn(batch, 1, D, generator=gen, dtype=torch.float64)
             + math.sqrt(1 - r0) * torch.randn(batch, L, D, generator=gen, dtype=torch.float64))
        x.requires_grad_(True)
        hcur = x
        ln = lambda t: torch.nn.functional.layer_norm(t, (D,))  # noqa: E731
        for kind, ws in layers:
            inp = ln(hcur) if pre else hcur
            if kind == "attn":
                q, k, v = (inp @ m for m in ws[:3])
                sh = lambda t: t.view(batch, L, H, D // H).transpose(1, 2)  # noqa: E731
                y = torch.nn.functional.scaled_dot_product_attention(sh(q), sh(k), sh(v), is_causal=True)
                f = y.transpose(1, 2).reshape(batch, L, D) @ ws[3]
            else:
                f = torch.relu(inp @ ws[0]) @ ws[1]
            hcur = hcur + f if pre else ln(hcur + f)
        top = ln(hcur) if pre else hcur
        top.backward(torch.randn(top.shape, generator=gen, dtype=torch.float64))
        g = x.grad.detach()
        s = g.permute(1, 0, 2).reshape(L, batch * D)
        s = s - s.mean(1, keepdim=True)
        c = (s @ s.T) / (batch * D)
        var = float(g.var(unbiased=False))
        corr = float((c.sum() - c.diagonal().sum()) / (L * (L - 1))) / var
        out.append((var, corr, c.diagonal().numpy()))
    return out


def _theory_stack(kinds, norm, r0, depth, positional=True):
    cfg = ModelConfig(arch="decoder", norm=norm, n_layers=depth, d_model=D, n_heads=H, seq_len=L,
                      dropout=0.0, attn_dropout=0.0, emb_dropout=0.0, r0=r0)
    pre = norm == "pre"
    ln = LayerNorm(D)
    x = Signal(0.0, 1.0, r0)
    steps = []
    for i in range(depth):
        for kind in kinds:
            comp = (AttentionBlock(D, H, L, QKV, QKV, QKV, O_VAR, causal=True) if kind == "attn"
                    else FFNBlock(D, 4 * D, 2 / (5 * D), 2 / (5 * D)))
            h = ln.forward(x) if pre else x
            f = comp.forward(h)
            merge = ResidualMerge(1.0, 1.0)
            z = merge.forward(x, f)
            y = z if pre else ln.forward(z)
            steps.append(_Step(f"layers.{i}.{kind}", i + 1, kind, comp, merge, x, h, f, z, y, None))
            x = y
    seed = Grad(1.0, 0.0)
    if positional:
        captured = []
        orig = P.pooled

        def grab(G):
            captured.append(G)
            return orig(G)

        P.pooled = grab
        try:
            _, g_in, _ = P.causal_backward(cfg, steps, seed, Signal(0.0, 1.0, r0))
        finally:
            P.pooled = orig
        return g_in, np.diag(captured[-1])
    _, g_in, _ = backward_stack(cfg, steps, ln.backward(x, seed) if pre else seed)
    return g_in, None


def _tol(samples, rel_model):
    m = np.mean(samples)
    se = np.std(samples, ddof=1) / math.sqrt(len(samples))
    return m, rel_model * abs(m) + 3 * se


@pytest.mark.parametrize("kinds, norm, depth", [(("attn",), "post", 4), (("attn", "ffn"), "post", 3),
                                                (("attn",), "pre", 4)])
def test_causal_stack_gradient_matches_monte_carlo(kinds, norm, depth):
    mc = _mc_stack(kinds, norm, 0.8, depth)
    new, prof = _theory_stack(kinds, norm, 0.8, depth)
    old, _ = _theory_stack(kinds, norm, 0.8, depth, positional=False)
    mv, tv = _tol([m[0] for m in mc], 0.2)
    mc_corr, tc = _tol([m[1] for m in mc], 0.0)
    assert abs(new.var - mv) < tv, (new.var, mv, tv)
    assert abs(new.corr - mc_corr) < tc + 0.02, (new.corr, mc_corr, tc)
    assert abs(new.var / mv - 1) <= abs(old.var / mv - 1) + 0.02   # never worse than the pooled engine
    # the per-position profile: position 1 dominates, the late positions are flat
    pv = np.mean([m[2] for m in mc], axis=0)
    assert prof[0] == pytest.approx(pv[0], rel=0.35)
    assert prof[-4:].mean() == pytest.approx(pv[-4:].mean(), rel=0.35)


def test_post_ln_causal_pooled_engine_was_far_off_and_positional_is_not():
    # docs/causal_attention.md §8: after 6 Post-LN causal layers (d 32) the pooled backward predicts
    # 0.21 against 0.86 measured; the positional one 0.58 (the rest is a finite-width LayerNorm effect
    # of about -7% per layer at d = 32 that compounds on the dominant first position, §8.4)
    mc = _mc_stack(("attn",), "post", 0.8, 6, seeds=4)
    new, _ = _theory_stack(("attn",), "post", 0.8, 6)
    old, _ = _theory_stack(("attn",), "post", 0.8, 6, positional=False)
    mv = np.mean([m[0] for m in mc])
    assert abs(new.var / mv - 1) < 0.45
    assert abs(old.var / mv - 1) > 0.6
    assert abs(new.corr - np.mean([m[1] for m in mc])) < 0.03 < abs(old.corr - np.mean([m[1] for m in mc]))


def test_predict_positional_flag_and_encoders_unchanged():
    cfg = ModelConfig(arch="encoder", n_layers=4, d_model=64, n_heads=4, seq_len=32)
    a, b = predict(cfg), predict(cfg, positional=False)
    assert a.to_records() == b.to_records()
    dec = ModelConfig(n_layers=4, norm="post", scheme="xavier", d_model=64, n_heads=4, seq_len=32)
    a, b = predict(dec), predict(dec, positional=False)
    assert a[-1].grad_var == b[-1].grad_var == 1.0
    assert a[0].grad_var != b[0].grad_var
    ed = predict(ModelConfig(arch="encoder-decoder", n_layers=2, n_decoder_layers=2, d_model=64, n_heads=4,
                             seq_len=32))
    assert all(r.grad_var > 0 for r in ed)
