"""deepscalelm.measure: record schema and agreement with direct computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import deepscalelm
from deepscalelm.config import ModelConfig
from deepscalelm.measure import moments
from deepscalelm.models import build_model
from deepscalelm.records import Trajectory

torch.set_num_threads(1)


def tiny(arch="decoder", norm="pre", **kw) -> ModelConfig:
    base = dict(arch=arch, norm=norm, n_layers=2, d_model=32, n_heads=4, seq_len=16, vocab_size=64,
                scheme="xavier", image_size=8, patch_size=4, channels=1)
    base.update(kw)
    return ModelConfig(**base)


def np_moments(x: np.ndarray) -> tuple[float, float, float]:
    """Independent reference: E[x], E[x^2]-E[x]^2, mean off-diagonal of np.cov over positions / var."""
    B, L, d = x.shape
    var = (x ** 2).mean() - x.mean() ** 2
    c = np.cov(np.transpose(x, (1, 0, 2)).reshape(L, B * d))
    off = (c.sum() - np.trace(c)) / (L * (L - 1))
    return x.mean(), var, off / var


def test_moments_match_numpy_and_known_correlation():
    g = torch.Generator().manual_seed(0)
    B, L, d, r = 64, 8, 32, 0.4
    # x_i = sqrt(r) z + sqrt(1-r) e_i: unit variance, correlation r between positions
    x = math.sqrt(r) * torch.randn(B, 1, d, generator=g) + math.sqrt(1 - r) * torch.randn(B, L, d, generator=g)
    m, v, c = moments(x)
    rm, rv, rc = np_moments(x.double().numpy())
    assert (m, v, c) == pytest.approx((rm, rv, rc), rel=1e-9, abs=1e-12)
    n = B * d  # independent samples per position pair
    assert v == pytest.approx(1.0, abs=5 * math.sqrt(2 / n))
    assert c == pytest.approx(r, abs=5 / math.sqrt(n))
    with pytest.raises(ValueError, match=r"\[batch, length, width\]"):
        moments(torch.zeros(3, 4))


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("arch", ["decoder", "encoder", "encoder-decoder", "vit"])
def test_record_keys(arch, norm):
    config = tiny(arch, norm)
    model = build_model(config)
    if arch == "vit":
        batch = torch.randn(4, 1, 8, 8)
    elif arch == "encoder-decoder":
        batch = (torch.randint(0, 64, (4, 8)), torch.randint(0, 64, (4, 16)))
    else:
        batch = torch.randint(0, 64, (4, 16))
    traj = deepscalelm.measure(model, batch)
    assert isinstance(traj, Trajectory) and traj.source == "measured"
    stacks = ["encoder", "decoder"] if arch == "encoder-decoder" else [""]
    expected = []
    for s in stacks:
        blocks = ["attn", "cross_attn", "ffn"] if s == "decoder" else ["attn", "ffn"]
        expected.append((s, 0, "embedding"))
        expected += [(s, i, b) for i in (1, 2) for b in blocks]
        if norm == "pre":
            expected.append((s, 2, "final_norm"))
    assert [r.key for r in traj] == expected
    for r in traj:
        assert all(math.isfinite(v) for v in (r.mean, r.var, r.corr, r.grad_var, r.grad_corr)), r
        assert (r.block_var is None) == (r.block in ("embedding", "final_norm"))


def _direct(model, ids, seed):
    """Stream, block outputs and stream gradients of a single-stack Pre/Post-LN model by hand."""
    xs, fs = [], []
    x = model.drop_emb(model.embed(ids))
    xs.append(x)
    for layer in model.layers:
        for block in (layer.attn, layer.ffn):
            if block.pre:
                f = block.drop(block.f(block.ln(x)))
                x = block.lam * x + block.beta * f
            else:
                f = block.drop(block.f(x))
                x = block.ln(block.lam * x + block.beta * f)
            fs.append(f)
            xs.append(x)
    if model.ln_f is not None:
        x = model.ln_f(x)
        xs.append(x)
    for t in xs:
        t.retain_grad()
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(x.shape, generator=gen)
    (x * g).sum().backward()
    return xs, fs


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_measure_equals_direct_computation(norm):
    torch.manual_seed(0)
    model = build_model(tiny(norm=norm, n_layers=2)).eval()
    ids = torch.randint(0, 64, (8, 16))
    traj = deepscalelm.measure(model, ids, seed=5)
    xs, fs = _direct(model, ids, seed=5)
    assert len(traj) == len(xs)
    for i, (rec, x) in enumerate(zip(traj, xs, strict=True)):
        assert (rec.mean, rec.var, rec.corr) == pytest.approx(np_moments(x.detach().double().numpy()),
                                                              rel=1e-5, abs=1e-7)
        _, gv, gc = np_moments(x.grad.double().numpy())
        assert (rec.grad_var, rec.grad_corr) == pytest.approx((gv, gc), rel=1e-5, abs=1e-7), rec.key
        if 0 < i <= len(fs):
            _, bv, bc = np_moments(fs[i - 1].detach().double().numpy())
            assert (rec.block_var, rec.block_corr) == pytest.approx((bv, bc), rel=1e-5, abs=1e-7)
    # the injected gradient is iid N(0, 1): variance 1 within 5 sd of its estimate
    n = ids.numel() * 32
    assert traj[-1].grad_var == pytest.approx(1.0, abs=5 * math.sqrt(2 / n))
    assert abs(traj[-1].grad_corr) < 5 / math.sqrt(8 * 32)


def test_measure_keeps_mode_and_grads_and_checkpointing():
    model = build_model(tiny(dropout=0.2)).train()
    ids = torch.randint(0, 64, (4, 16))
    a = deepscalelm.measure(model, ids, protocol="loss")
    assert model.training and all(p.grad is None for p in model.parameters())
    assert a.meta["protocol"] == "loss" and a.meta["training"] is True
    model.eval()
    b = deepscalelm.measure(model, ids)
    model.set_activation_checkpointing(True)
    c = deepscalelm.measure(model, ids)
    assert [r.var for r in b] == pytest.approx([r.var for r in c], rel=1e-6)
    assert [r.grad_var for r in b] == pytest.approx([r.grad_var for r in c], rel=1e-6)


def test_measure_loss_protocol_vit_and_bad_input():
    model = build_model(tiny("vit"))
    traj = deepscalelm.measure(model, torch.randn(4, 1, 8, 8), protocol="loss", targets=torch.tensor([0, 1, 2, 3]))
    assert traj[0].block == "embedding" and math.isfinite(traj[0].grad_var)
    with pytest.raises(ValueError, match="protocol must be one of"):
        deepscalelm.measure(model, torch.randn(4, 1, 8, 8), protocol="grad")
    with pytest.raises(ValueError, match="batch must be a tensor"):
        deepscalelm.measure(model, [1, 2])
