"""Grouped-query attention, QK-norm and ``position="none"`` in the theory, against the PyTorch models.

Monte-Carlo tolerances follow tests/test_theory_modern.py: a model allowance plus 4 standard errors of a
variance estimate, var * sqrt(2 / n_eff). In the block check every run draws its own weights, and the
per-draw moments of a block with d_head-wide heads fluctuate like an average over runs * d_head
independent values, so n_eff = runs * d_head (conservative: the output has d_model units).
"""

from __future__ import annotations

import math
import statistics

import pytest
import torch

import deepscalelm
from deepscalelm import ModelConfig, predict
from deepscalelm.theory.attention import Attention
from deepscalelm.theory.blocks import AttentionBlock
from deepscalelm.theory.moments import Grad, Signal
from deepscalelm.theory.naming import n_embedding_tables, weight_shapes
from deepscalelm.theory.schemes import SCHEME_FUNCTIONS, embedding_corr, get_scheme
from deepscalelm.validate import checks
from deepscalelm.validate.protocol import calc_err

torch.set_num_threads(1)

X = Signal(0.0, 1.0, 0.4)
G = Grad(1.0, 0.3)


def _tol(n_eff: int, allowance: float) -> float:
    return allowance + 4.0 * math.sqrt(2.0 / n_eff)


# ------------------------------------------------------------------------------ grouped-query attention
@pytest.mark.parametrize("causal", [False, True])
def test_gqa_moments_equal_mha(causal):
    """The derivation (docs/theory.md): every cross-term between two heads is linear in their
    independent output-projection slices, so sharing K/V changes no second moment."""
    ref = AttentionBlock(64, 4, 32, 1 / 64, 1 / 64, 1 / 64, 1 / 64, causal=causal)
    for kv in (1, 2):
        blk = AttentionBlock(64, 4, 32, 1 / 64, 1 / 64, 1 / 64, 1 / 64, causal=causal, n_kv_heads=kv)
        assert blk.forward(X) == ref.forward(X)
        assert blk.backward(X, G) == ref.backward(X, G)


def test_gqa_bad_input():
    for kv in (3, 0, 2.0, True):
        with pytest.raises(ValueError, match="n_kv_heads must be None or a positive integer dividing n_heads=4"):
            AttentionBlock(64, 4, 32, 1 / 64, 1 / 64, 1 / 64, 1 / 64, n_kv_heads=kv)


def test_gqa_weight_shapes_and_schemes_match_the_model():
    cfg = ModelConfig(n_layers=2, d_model=64, n_heads=4, n_kv_heads=1, norm="post")
    shapes = weight_shapes(cfg)
    model = deepscalelm.build_model(cfg)
    params = dict(model.named_parameters())
    for name, shape in shapes.items():
        assert tuple(params[name].shape) == shape, name
    assert shapes["layers.0.attn.k.weight"] == (16, 64) and shapes["layers.0.attn.q.weight"] == (64, 64)
    # DeepNet's Xavier-normal follows the real fan-out of the K/V projection
    assert get_scheme(cfg, "deepnet").var("layers.0.attn.k.weight") == pytest.approx(2 / (16 + 64))


# ------------------------------------------------------------------------------------------ QK-norm
@pytest.mark.parametrize("norm,n", [("rmsnorm", 16), ("layernorm", 15)])
def test_qk_norm_logit_variance_is_fixed(norm, n):
    """After a per-head norm the logit variance is d_head / n whatever the Q/K weights and input."""
    outs = []
    for qv, s2 in ((1 / 64, 1.0), (4 / 64, 1.0), (0.01 / 64, 3.0)):
        head = Attention(64, 16, 32, qv, qv, 1 / 64, qk_norm=norm)
        m = head._moments(Signal(0.0, s2, 0.0), None)
        assert m[4] == pytest.approx(16 / n, rel=1e-12)
        outs.append(head.forward(Signal(0.0, s2, 0.4)).corr)
    assert max(outs) - min(outs) < 1e-12   # correlation independent of q_var, k_var and scale
    plain = Attention(64, 16, 32, 1 / 64, 1 / 64, 1 / 64)
    normed = Attention(64, 16, 32, 1 / 64, 1 / 64, 1 / 64, qk_norm=norm)
    gain = (n - 1) / (n - 2)
    ratio_q = normed._q_path(X, G, None)[0] / plain._q_path(X, G, None)[0]
    assert ratio_q == pytest.approx(gain * 16 / n, rel=0.05)   # same logits up to the key-correlation map


def test_qk_norm_bad_input():
    with pytest.raises(ValueError, match="qk_norm must be one of None, 'rmsnorm', 'layernorm', got 'l2'"):
        Attention(64, 16, 32, 1 / 64, 1 / 64, 1 / 64, qk_norm="l2")
    with pytest.raises(ValueError, match="qk_norm='layernorm' needs d_head >= 4, got d_head=3"):
        Attention(64, 3, 32, 1 / 64, 1 / 64, 1 / 64, qk_norm="layernorm")
    with pytest.raises(ValueError, match="qk_norm must be one of"):
        AttentionBlock(64, 4, 32, 1 / 64, 1 / 64, 1 / 64, 1 / 64, qk_norm="RMSNorm")


# ------------------------------------------------------------- Monte Carlo of the models' PyTorch block
MC_POINTS = [dict(kv=kv, qk_norm=qk, causal=causal, mqk=2.0 if qk != "none" else 1.0)
             for kv, qk in ((1, "none"), (2, "none"), (4, "none"), (1, "rmsnorm"), (2, "layernorm"), (4, "rmsnorm"))
             for causal in (False, True)]


def _mc_id(p: dict) -> str:
    return f"kv{p['kv']}-{p['qk_norm']}-{'causal' if p['causal'] else 'bidir'}"


@pytest.mark.parametrize("pt", MC_POINTS, ids=_mc_id)
def test_attention_block_monte_carlo(pt):
    """Measured forward and backward moments of `models.blocks.Attention` (fresh weights per run, d 64,
    4 heads) against `AttentionBlock`: within 7 % + 4 standard errors (the largest systematic error
    on this grid is +5.7 %, the QK-norm causal gradient variance)."""
    runs = 800
    full = dict(d=64, H=4, L=32, sx=1.0, rx=0.4, sg=1.0, rg=0.3, mv=1.0, mo=1.0, runs=runs, **pt)
    gen = torch.Generator().manual_seed(7)
    tol = _tol(runs * 16, 0.07)
    for qty, actual, pred, pred_var in checks.check_attention_block(full, gen, torch.float64):
        assert calc_err(actual, pred, pred_var) <= tol, (qty, actual, pred, tol)


def test_qk_norm_block_is_invariant_to_qk_scale_in_monte_carlo():
    """The measured block with QK-norm does not see the Q/K weight scale (logit variance 16 without
    the norm at mqk 2: the unnormalised prediction would be off by 3x)."""
    base = dict(d=64, H=4, kv=2, qk_norm="rmsnorm", causal=False, L=32, sx=1.0, rx=0.4, sg=1.0, rg=0.3,
                mv=1.0, mo=1.0, runs=400)
    a = checks._block_mc(dict(base, mqk=0.5), torch.Generator().manual_seed(3), torch.float64)
    b = checks._block_mc(dict(base, mqk=2.0), torch.Generator().manual_seed(3), torch.float64)
    assert a["y"]["var"] == pytest.approx(b["y"]["var"], rel=1e-4)   # up to the norms' eps
    assert a["gx"]["var"] == pytest.approx(b["gx"]["var"], rel=1e-4)   # up to the norms' eps


# ------------------------------------------------------------------------------------- position="none"
@pytest.mark.parametrize("arch,tables", [("decoder", 1), ("encoder", 2), ("vit", 1)])
def test_no_position_table(arch, tables):
    kw = dict(n_token_types=2) if arch == "encoder" else {}
    cfg = ModelConfig(arch=arch, n_layers=2, position="none", emb_dropout=0.1, **kw)
    assert n_embedding_tables(cfg) == tables
    assert not any("pos_emb" in n for n in weight_shapes(cfg))
    params = {n for n, _ in deepscalelm.build_model(cfg).named_parameters()}
    assert set(weight_shapes(cfg)) <= params
    for name in SCHEME_FUNCTIONS:
        if name == "deepnet":
            continue
        assert set(get_scheme(cfg, name).weight_var) == set(weight_shapes(cfg))
    if arch != "vit":
        assert get_scheme(cfg, "dslm").var("tok_emb.weight") == pytest.approx(0.9 / tables)
    emb = predict(cfg, "dslm").records[0]
    assert emb.var == pytest.approx(1.0, rel=1e-12)   # (1 - p)/T with T the existing tables
    if arch == "decoder":
        assert embedding_corr(cfg) == pytest.approx(cfg.token_repeat_prob)
        assert emb.corr == pytest.approx(0.9 * cfg.token_repeat_prob, rel=1e-9)   # after dropout
    if arch == "encoder":
        assert embedding_corr(cfg) == pytest.approx((cfg.token_repeat_prob + 1) / 2)


def test_learned_positions_unchanged():
    cfg = ModelConfig(n_layers=2)
    assert n_embedding_tables(cfg) == 2 and "pos_emb.weight" in weight_shapes(cfg)
    assert embedding_corr(cfg) == pytest.approx(cfg.token_repeat_prob / 2)


# ------------------------------------------------------------------- whole models against measurement
L_MODEL = 64


@pytest.fixture(scope="module")
def batch():
    """32 windows of the built-in Tiny Shakespeare text and their P(two positions share a byte)."""
    import gzip
    from importlib import resources

    raw = gzip.decompress((resources.files("deepscalelm.data") / "tinyshakespeare.txt.gz").read_bytes())
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8).long()
    g = torch.Generator().manual_seed(0)
    starts = torch.randint(0, data.numel() - L_MODEL, (32,), generator=g).tolist()
    ids = torch.stack([data[s: s + L_MODEL] for s in starts])
    counts = torch.zeros(32, 256).scatter_add_(1, ids, torch.ones(32, L_MODEL))
    return ids, float((counts * (counts - 1)).sum(1).mean() / (L_MODEL * (L_MODEL - 1)))


MODEL_CASES = [("pre", "dslm", dict(position="none")), ("post", "normal", dict(position="none")),
               ("pre", "dslm", dict(n_kv_heads=1, qk_norm="rmsnorm")),
               ("post", "dslm", dict(n_kv_heads=2, qk_norm="layernorm")),
               ("pre", "normal", dict(n_kv_heads=2, qk_norm="rmsnorm", position="none", norm_type="rmsnorm",
                                      activation="swiglu", bias=False))]


@pytest.mark.parametrize("norm,scheme,kw", MODEL_CASES, ids=str)
def test_models_match_prediction(norm, scheme, kw, batch):
    """Measured models (d 64, 4 heads, L 64, 6 layers, train mode) against `predict`: each sublayer's
    moments averaged over three weight draws (grouped K/V make one draw fluctuate more), then the
    median over sublayers within the agreement tests' bars (variance 10 %, correlation 0.05,
    gradient variance 20 %)."""
    ids, p_same = batch
    cfg = ModelConfig(arch="decoder", n_layers=6, d_model=64, n_heads=4, seq_len=L_MODEL, norm=norm,
                      scheme=scheme, same_token_prob=p_same, **kw)
    pred = predict(cfg)
    draws = []
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        model = deepscalelm.build_model(cfg).train()
        draws.append(deepscalelm.measure(model, ids, protocol="paper", seed=seed).join(pred))
    var, corr, gvar = [], [], []
    for k, (_m, p) in enumerate(draws[0]):
        ms = [d[k][0] for d in draws]
        var.append(abs(statistics.fmean(m.var for m in ms) / p.var - 1))
        corr.append(abs(statistics.fmean(m.corr for m in ms) - p.corr))
        gvar.append(abs(statistics.fmean(m.grad_var for m in ms) / p.grad_var - 1))
    assert statistics.median(var) < 0.10, var
    assert statistics.median(corr) < 0.05, corr
    assert statistics.median(gvar) < 0.20, gvar
