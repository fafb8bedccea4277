"""Rotary positions in the attention theory (docs/rope.md): geometry, limits, Monte Carlo, predict."""

from __future__ import annotations

import math

import pytest

from deepscalelm.config import ModelConfig
from deepscalelm.theory.attention import Attention
from deepscalelm.theory.blocks import AttentionBlock
from deepscalelm.theory.model import predict
from deepscalelm.theory.moments import Grad, Signal
from deepscalelm.theory.rope import RopeGeometry, rope_geometry, rope_kernel


def _kernel(d_head: int, base: float, delta: int) -> float:
    th = [base ** (-2.0 * p / d_head) for p in range(d_head // 2)]
    return sum(math.cos(t * delta) for t in th) / len(th)


@pytest.mark.parametrize("d_head,L", [(8, 6), (16, 9)])
def test_geometry_matches_brute_force_sums(d_head, L):
    base = 50.0
    g = RopeGeometry(d_head, base, L)
    c = lambda dl: _kernel(d_head, base, dl)   # noqa: E731
    for n in range(1, L + 1):
        full = sum(c(j - k) for j in range(n) for k in range(n)) / n ** 2
        assert g.c_full[n] == pytest.approx(full, abs=1e-12)
        if n > 1:
            off = sum(c(j - k) for j in range(n) for k in range(n) if j != k) / (n * (n - 1))
            assert g.c_off[n] == pytest.approx(off, abs=1e-12)
    # bidirectional query pairs: mean of c and of (c - m) / (1 - 1/L)
    pairs = [(i, k) for i in range(L) for k in range(L) if i != k]
    m = lambda dl, n: sum(c(j - k - dl) for j in range(n) for k in range(n)) / n ** 2   # noqa: E731
    assert g.bi_c == pytest.approx(sum(c(i - k) for i, k in pairs) / len(pairs), abs=1e-12)
    bi_d = sum(c(i - k) - m(i - k, L) for i, k in pairs) / len(pairs) / (1 - 1 / L)
    assert g.bi_d == pytest.approx(bi_d, abs=1e-12)
    # causal pairs (1-based positions), weights (1 - 1/min) / (i k), m over the common window
    w = c_sum = d_sum = 0.0
    for i in range(1, L + 1):
        for k in range(1, L + 1):
            if i == k:
                continue
            lo = min(i, k)
            wt = (1 - 1 / lo) / (i * k)
            if wt == 0:
                continue
            dl = abs(k - i)
            w += wt
            c_sum += wt * c(dl)
            d_sum += wt * (c(dl) - m(dl, lo)) / (1 - 1 / lo)
    assert g.ca_c == pytest.approx(c_sum / w, abs=1e-12)
    assert g.ca_d == pytest.approx(d_sum / w, abs=1e-12)
    assert rope_kernel(d_head, base, 3) == pytest.approx(c(3), abs=1e-15)


class _NoRotation:
    """A geometry whose kernel is 1 everywhere: rotary positions that never rotate."""

    def __init__(self, L: int) -> None:
        self.seq_len = L
        self.c_full = [1.0] * (L + 1)
        self.c_off = [1.0] * (L + 1)
        self.bi_c, self.bi_d, self.ca_c, self.ca_d = 1.0, 0.0, 1.0, 0.0


@pytest.mark.parametrize("causal,tol", [(False, 1e-12), (True, 2e-3)])
@pytest.mark.parametrize("rx,rg,p", [(0.0, 0.0, 0.0), (0.6, 0.4, 0.2), (0.9, 0.1, 0.0)])
def test_rope_formulas_reduce_to_plain_attention_without_rotation(causal, tol, rx, rg, p):
    d, dk, L = 96, 32, 48
    args = (d, dk, L, 0.8 / d, 0.8 / d, 1.3 / d)
    plain = Attention(*args, attn_dropout=p, causal=causal)
    rope = Attention(*args, attn_dropout=p, causal=causal, rope=True)
    rope._geo = _NoRotation(L)
    x, g = Signal(0.0, 1.1, rx), Grad(0.7, rg)
    for a, b in ((plain.forward(x), rope.forward(x)), (plain.backward(x, g), rope.backward(x, g))):
        assert b.var == pytest.approx(a.var, rel=tol)
        assert b.corr == pytest.approx(a.corr, rel=tol, abs=tol)


def test_rotation_changes_only_correlated_inputs():
    d, dk, L = 128, 32, 64
    args = (d, dk, L, 1.0 / d, 1.0 / d, 1.0 / d)
    x0, g = Signal(0.0, 1.0, 0.0), Grad(1.0, 0.0)
    plain, rope = Attention(*args), Attention(*args, rope=True)
    # r = 0: the logits of different keys are independent with or without rotation, so the value
    # path (softmax masses, correlated attention patterns) is unchanged; only the logit-coupling
    # terms, sums over rotated keys, shrink
    vp = Attention(*args, qk_grad=False).backward(x0, g).var
    assert Attention(*args, qk_grad=False, rope=True).backward(x0, g).var == pytest.approx(vp, rel=1e-12)
    assert rope.forward(x0).var < plain.forward(x0).var
    # r = 0.8: the rotated shared key part no longer cancels, the Q path grows
    x8 = Signal(0.0, 1.0, 0.8)
    assert rope.backward(x8, g).var > 1.2 * plain.backward(x8, g).var


@pytest.mark.parametrize("causal,miss", [(False, 0.25), (True, 0.08)])
def test_rope_matches_monte_carlo_where_rotation_matters(causal, miss):
    torch = pytest.importorskip("torch")
    from deepscalelm.validate.checks import _attention_mc

    pt = dict(sx=1.0, sg=1.0, rx=0.8, mv=1.0, mqk=1.0, p=0.0, rg=0.0, d_in=128, d_k=32, L=64, runs=128,
              rope_base=10000.0)
    gen = torch.Generator().manual_seed(5)
    ms = [_attention_mc(pt, gen, torch.float64, causal) for _ in range(3)]
    meas_x = sum(m["y"]["var"] for m in ms) / 3
    meas_g = sum(m["gx"]["var"] for m in ms) / 3
    args = (128, 32, 64, 1.0 / 128, 1.0 / 128, 1.0 / 128)
    x, g = Signal(0.0, 1.0, 0.8), Grad(1.0, 0.0)
    rope = Attention(*args, causal=causal, rope=True)
    plain = Attention(*args, causal=causal)
    assert meas_x == pytest.approx(rope.forward(x).var, rel=0.03)
    assert meas_g == pytest.approx(rope.backward(x, g).var, rel=0.04)
    # the rotation-free formula misses the rotated Q path by far more than that
    assert abs(meas_g / plain.backward(x, g).var - 1) > miss


def test_rope_bad_input():
    args = (64, 16, 32, 1 / 64, 1 / 64, 1 / 64)
    with pytest.raises(ValueError, match="d_head must be an even integer"):
        Attention(64, 15, 32, 1 / 64, 1 / 64, 1 / 64, rope=True)
    with pytest.raises(ValueError, match="rope_base must be a finite number > 1"):
        Attention(*args, rope=True, rope_base=1.0)
    with pytest.raises(ValueError, match="rope must be True or False"):
        Attention(*args, rope="yes")
    with pytest.raises(ValueError, match="rope=True needs exact=True"):
        Attention(*args, rope=True, exact=False)
    head = Attention(*args, rope=True)
    kv = Signal(0.0, 1.0, 0.2)
    with pytest.raises(ValueError, match="rope must be False for cross-attention"):
        head.forward(Signal(0.0, 1.0, 0.2), kv=kv)
    with pytest.raises(ValueError, match="rope must be False for cross-attention"):
        head.backward_kv(Signal(0.0, 1.0, 0.2), Grad(1.0, 0.0), kv)


def test_attention_block_keys_its_memo_by_rope():
    x = Signal(0.0, 1.0, 0.7)
    kw = dict(d_model=64, n_heads=4, seq_len=32, q_var=1 / 64, k_var=1 / 64, v_var=1 / 64, o_var=1 / 64)
    a, b = AttentionBlock(**kw), AttentionBlock(**kw, rope=True)
    c = AttentionBlock(**kw, rope=True, rope_base=100.0)
    va, vb, vc = a.forward(x).var, b.forward(x).var, c.forward(x).var
    assert len({va, vb, vc}) == 3
    assert b.backward(x, Grad(1.0, 0.0)).var != a.backward(x, Grad(1.0, 0.0)).var
    assert rope_geometry(16, 100.0, 32) is rope_geometry(16, 100.0, 32)


@pytest.mark.parametrize("arch", ["decoder", "encoder", "encoder-decoder"])
def test_predict_accepts_rope(arch):
    cfg = ModelConfig(arch=arch, n_layers=3, d_model=64, n_heads=4, seq_len=32, position="rope", rope_base=500.0)
    t = predict(cfg, "xavier")
    learned = predict(ModelConfig(arch=arch, n_layers=3, d_model=64, n_heads=4, seq_len=32), "xavier")
    assert t.meta["backward"] == ("pooled" if arch == "encoder" else "positional")
    assert all(math.isfinite(r.grad_var) and r.grad_var > 0 for r in t.records)
    assert t.records[0].grad_var != learned.records[0].grad_var
    # rope_base reaches the heads
    other = predict(ModelConfig(arch=arch, n_layers=3, d_model=64, n_heads=4, seq_len=32, position="rope"), "xavier")
    assert other.records[0].grad_var != t.records[0].grad_var
    if arch != "encoder":   # the pooled causal backward has the rotary formulas too
        pooled = predict(cfg, "xavier", positional=False)
        assert pooled.meta["backward"] == "pooled"
        assert pooled.records[0].grad_var == pytest.approx(t.records[0].grad_var, rel=0.5)


@pytest.mark.parametrize("r,rg", [(0.0, 0.3), (0.5, 0.3), (0.85, 0.0)])
def test_positional_rope_attention_pools_to_the_head_formulas(r, rg):
    """For an exchangeable input and gradient the position-resolved causal block (rotary pair kernel
    per query pair) pools to the pooled rotary formulas (pair means of the kernel); they differ
    only at second order in the pair fluctuations of kappa."""
    np = pytest.importorskip("numpy")
    from deepscalelm.theory import positional as P

    L = 48
    blk = AttentionBlock(64, 4, L, 1 / 64, 1 / 64, 1 / 64, 1 / 64, causal=True, rope=True)
    x, g = Signal(0.0, 1.0, r), Grad(1.0, rg)
    pg = P.pooled(P._attention_backward(blk, x, P.exchangeable(g, L)))
    b = blk.backward(x, g)
    assert pg.var == pytest.approx(b.var, rel=0.015)
    assert pg.corr == pytest.approx(b.corr, abs=0.006)
    K = P.attention_forward(blk, P._exchangeable_cov(x, L))
    f = blk.forward(x)
    assert float(np.mean(np.diag(K))) == pytest.approx(f.var, rel=1e-3)
    assert float((K.sum() - np.trace(K)) / (L * (L - 1))) == pytest.approx(f.cov, rel=1e-3, abs=1e-6)


def test_rope_pair_matrices_average_to_the_pooled_pair_means():
    g = rope_geometry(16, 10000.0, 24)
    kc, dd, cf, co = g.pair_matrices()
    L = 24
    w = sum((1 - 1 / min(i, k)) / (i * k) for i in range(1, L + 1) for k in range(1, L + 1) if i != k)
    wc = sum((1 - 1 / min(i, k)) / (i * k) * kc[i - 1, k - 1] for i in range(1, L + 1) for k in range(1, L + 1)
             if i != k)
    wd = sum((1 - 1 / min(i, k)) / (i * k) * dd[i - 1, k - 1] for i in range(1, L + 1) for k in range(1, L + 1)
             if i != k)
    assert wc / w == pytest.approx(g.ca_c, abs=1e-12)
    assert wd / w == pytest.approx(g.ca_d, abs=1e-12)
    assert list(cf) == g.c_full[1:] and list(co) == g.c_off[1:]
