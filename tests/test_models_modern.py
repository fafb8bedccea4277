"""Llama-style options of the PyTorch models: RMSNorm, SiLU / gated FFN, RoPE, no positions, GQA, QK-norm."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepscalelm.config import ModelConfig
from deepscalelm.models import blocks, build_model
from deepscalelm.models.components import HeadTransform, rope_tables
from deepscalelm.models.init import scheme_weight_variances, weight_parameters
from deepscalelm.theory.schemes import Scheme, get_scheme

torch.set_num_threads(1)

LLAMA = dict(norm_type="rmsnorm", activation="swiglu", position="rope", n_kv_heads=2, bias=False,
             scheme="normal")


def tiny(arch: str = "decoder", **kw) -> ModelConfig:
    base = dict(arch=arch, n_layers=2, d_model=32, n_heads=4, seq_len=16, vocab_size=64, image_size=8,
                patch_size=4, channels=3, n_classes=5, scheme="xavier")
    base.update(kw)
    return ModelConfig(**base)


def batch(config: ModelConfig, B: int = 3, seed: int = 0) -> tuple:
    g = torch.Generator().manual_seed(seed)
    if config.arch == "vit":
        return (torch.randn(B, config.channels, config.image_size, config.image_size, generator=g),)
    ids = torch.randint(0, config.vocab_size, (B, config.seq_len), generator=g)
    return (ids[:, : config.seq_len // 2], ids) if config.arch == "encoder-decoder" else (ids,)


# ------------------------------------------------------------------------------------ defaults
#: (sum, sum of squares) of the logits and sum of squared parameter gradients, seed 0, train mode
#: (dropout on), xavier, computed with the models before the Llama-style options existed
GOLDEN = {
    ("decoder", "pre", "relu"): (34.950249864923535, 3338.864113091897, 8242251.74797946),
    ("decoder", "post", "gelu"): (81.91838334436761, 3571.085864960971, 7727495.359004621),
    ("encoder", "pre", "gelu"): (-106.3234281858895, 3167.913873790879, 24757051.793021165),
    ("encoder-decoder", "post", "relu"): (302.31320053523086, 2663.3045743865855, 16975535.914889283),
    ("vit", "pre", "gelu"): (2.529860407114029, 40.74646080061969, 8067.062012274003),
}


@pytest.mark.parametrize("key", list(GOLDEN))
def test_default_models_unchanged(key):
    arch, norm, act = key
    c = tiny(arch, norm=norm, activation=act, n_token_types=2 if arch == "encoder" else 0)
    torch.manual_seed(0)
    m = build_model(c).train()
    names = [n for n, _ in m.named_modules()]
    assert not any(n.endswith(("q_post", "k_post", "fc3")) for n in names)
    assert all(isinstance(mod, nn.LayerNorm) for mod in m.modules() if isinstance(mod, (nn.LayerNorm, nn.RMSNorm)))
    b = batch(c)
    torch.manual_seed(1)
    y = m(*b)
    y.sum().backward()
    gsum = sum(float(p.grad.double().pow(2).sum()) for p in m.parameters() if p.grad is not None)
    got = (float(y.detach().double().sum()), float(y.detach().double().pow(2).sum()), gsum)
    assert got == pytest.approx(GOLDEN[key], rel=1e-6)


# -------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("arch", ["decoder", "encoder", "encoder-decoder", "vit"])
def test_shapes_and_parameters(arch):
    c = tiny(arch, **LLAMA, qk_norm="rmsnorm")
    m = build_model(c)
    out = m(*batch(c))
    want = (3, c.n_classes) if arch == "vit" else (3, c.seq_len, c.vocab_size)
    assert tuple(out.shape) == want and torch.isfinite(out).all()
    params = dict(m.named_parameters())
    prefix = "decoder." if arch == "encoder-decoder" else ""
    dh = c.d_head
    assert params[f"{prefix}layers.0.attn.k.weight"].shape == (2 * dh, 32)
    assert params[f"{prefix}layers.0.attn.v.weight"].shape == (2 * dh, 32)
    assert params[f"{prefix}layers.0.attn.q.weight"].shape == (32, 32)
    assert params[f"{prefix}layers.0.ffn.fc3.weight"].shape == (c.ffn_dim, 32)
    assert params[f"{prefix}layers.0.attn.q_post.norm.weight"].shape == (dh,)
    assert not any("pos_emb" in n for n in params)
    assert not any(n.endswith(".bias") for n in params)  # RMSNorm has no shift, bias=False everywhere
    norms = [mod for mod in m.modules() if isinstance(mod, (nn.LayerNorm, nn.RMSNorm))]
    assert norms and all(isinstance(mod, nn.RMSNorm) for mod in norms)
    if arch == "encoder-decoder":  # rotary positions only in self-attention
        assert not m.decoder.layers[0].cross.q_post.rope and m.decoder.layers[0].attn.q_post.rope


def test_learned_positions_kept_and_layernorm_qk_norm():
    c = tiny(position="learned", qk_norm="layernorm", n_kv_heads=1)
    m = build_model(c)
    assert m.pos_emb is not None and isinstance(m.layers[0].attn.k_post.norm, nn.LayerNorm)
    assert not m.layers[0].attn.q_post.rope and m.layers[0].attn.k_post.n_heads == 1
    assert torch.isfinite(m(*batch(c))).all()


# ------------------------------------------------------------------------------------------ GQA
def test_gqa_with_all_heads_equals_mha_exactly():
    mha = build_model(tiny(position="rope", qk_norm="rmsnorm")).train()
    gqa = build_model(tiny(position="rope", qk_norm="rmsnorm", n_kv_heads=4)).train()
    gqa.load_state_dict(mha.state_dict())
    ids = batch(mha.config)[0]
    torch.manual_seed(3)
    a = mha(ids)
    torch.manual_seed(3)
    b = gqa(ids)
    assert torch.equal(a, b)


def _expand_kv(t: torch.Tensor, n_kv: int, group: int) -> torch.Tensor:
    """K/V weight [n_kv*dh, d] or bias [n_kv*dh] -> each K/V head's rows repeated for its query group."""
    rest = t.shape[1:]
    return t.view(n_kv, t.shape[0] // n_kv, *rest).repeat_interleave(group, dim=0).reshape(-1, *rest)


@pytest.mark.parametrize("fused", [True, False])
def test_gqa_equals_mha_with_shared_kv_weights(monkeypatch, fused):
    """Query head h reads K/V head h // (n_heads / n_kv_heads), through SDPA's enable_gqa or repeat_interleave."""
    monkeypatch.setattr(blocks, "_SDPA_GQA", fused and blocks._SDPA_GQA)
    gqa = build_model(tiny(position="rope", n_kv_heads=2, dropout=0.0, attn_dropout=0.0)).eval()
    mha = build_model(tiny(position="rope", dropout=0.0, attn_dropout=0.0)).eval()
    sd = gqa.state_dict()
    for n in list(sd):
        if ".attn.k." in n or ".attn.v." in n:
            sd[n] = _expand_kv(sd[n], 2, 2)
    mha.load_state_dict(sd)
    ids = batch(gqa.config)[0]
    with torch.no_grad():
        assert torch.allclose(gqa(ids), mha(ids), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------- RoPE
def test_rope_logits_depend_on_position_difference_only():
    H, dh, L = 2, 8, 12
    qt = HeadTransform(H, dh, None, True, 10000.0, 1e-5)
    g = torch.Generator().manual_seed(0)
    q0, k0 = torch.randn(H * dh, generator=g), torch.randn(H * dh, generator=g)
    q = qt(q0.expand(1, L, -1).contiguous()).view(L, H, dh)
    k = qt(k0.expand(1, L, -1).contiguous()).view(L, H, dh)
    s = torch.einsum("mhd,nhd->hmn", q, k)  # s[h, m, n] = <rope(q0, m), rope(k0, n)>
    for shift in (1, 3):
        assert torch.allclose(s[:, shift:, shift:], s[:, :-shift, :-shift], atol=1e-5)
    assert float((s[:, 0, 1:] - s[:, 0, :1]).abs().max()) > 1e-2  # the difference does matter
    # norms are kept (a rotation) and position 0 is the identity
    assert torch.allclose(q.norm(dim=-1), q0.view(H, dh).norm(dim=-1).expand(L, H), atol=1e-5)
    assert torch.allclose(q[0], q0.view(H, dh))


def test_rope_is_a_pairwise_rotation_by_m_theta():
    dh, base, m = 6, 100.0, 5
    cos, sin = rope_tables(m + 1, dh, base, dtype=torch.float64)
    x = torch.randn(dh, dtype=torch.float64)
    got = x * cos[m] + torch.cat((-x[dh // 2:], x[: dh // 2])) * sin[m]
    z = torch.complex(x[: dh // 2], x[dh // 2:]) * torch.exp(1j * m * base ** (-torch.arange(0, dh, 2) / dh))
    assert torch.allclose(got, torch.cat((z.real, z.imag)))


def test_causal_masking_holds_with_rope_gqa_qk_norm():
    c = tiny(**LLAMA, qk_norm="rmsnorm")
    m = build_model(c).eval()
    ids = batch(c)[0]
    t = 9
    changed = ids.clone()
    changed[:, t] = (changed[:, t] + 1) % c.vocab_size
    with torch.no_grad():
        a, b = m(ids), m(changed)
    assert torch.allclose(a[:, :t], b[:, :t], atol=1e-6)
    assert float((a[:, t:] - b[:, t:]).abs().max()) > 1e-4


@pytest.mark.parametrize("position", ["rope", "none"])
def test_bidirectional_positions(position):
    """position 'none': an encoder is permutation-equivariant (no positions at all); with RoPE it is not."""
    c = tiny("encoder", position=position, norm_type="rmsnorm", dropout=0.0, attn_dropout=0.0)
    m = build_model(c).eval()
    ids = batch(c)[0]
    perm = torch.randperm(c.seq_len, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = m(ids)[:, perm], m(ids[:, perm])
    if position == "none":
        assert torch.allclose(a, b, atol=1e-5)
    else:
        assert float((a - b).abs().max()) > 1e-3


# ---------------------------------------------------------------------------------- norms, FFN
def test_rmsnorm_output_has_unit_rms():
    m = build_model(tiny(norm_type="rmsnorm"))
    ln = m.layers[0].attn.ln
    assert isinstance(ln, nn.RMSNorm) and torch.equal(ln.weight, torch.ones(32))
    x = 7.0 * torch.randn(5, 16, 32) + 3.0
    with torch.no_grad():
        y = ln(x)
    assert torch.allclose(y.pow(2).mean(-1).sqrt(), torch.ones(5, 16), atol=1e-4)
    assert float(y.mean(-1).abs().max()) > 0.1  # unlike LayerNorm, the mean is not removed
    assert isinstance(m.ln_f, nn.RMSNorm)


@pytest.mark.parametrize("activation,act", [("swiglu", F.silu), ("geglu", F.gelu), ("silu", F.silu)])
def test_ffn_matches_hand_computation(activation, act):
    c = tiny(activation=activation, bias=True, scheme="normal")
    ffn = build_model(c).layers[0].ffn
    with torch.no_grad():
        for lin in (ffn.fc1, ffn.fc2) + ((ffn.fc3,) if ffn.fc3 is not None else ()):
            lin.bias.normal_()
        h = torch.randn(2, 5, 32, dtype=torch.float64)
        w1, b1, w2, b2 = (t.double() for t in (ffn.fc1.weight, ffn.fc1.bias, ffn.fc2.weight, ffn.fc2.bias))
        a = act(h @ w1.T + b1)
        if activation != "silu":
            a = a * (h @ ffn.fc3.weight.double().T + ffn.fc3.bias.double())
        else:
            assert ffn.fc3 is None
        want = a @ w2.T + b2
        got = ffn.double().f(h)
    assert torch.allclose(got, want, atol=1e-12)


# ------------------------------------------------------------------------------------------ init
def test_w3_gets_the_gate_variance_unless_the_scheme_lists_it():
    c = tiny(**LLAMA, d_model=64, d_ff=256)
    s = get_scheme(c, "xavier")
    m = build_model(c, s)
    w = weight_parameters(m)
    fc1, fc3 = "layers.1.ffn.fc1.weight", "layers.1.ffn.fc3.weight"
    var = scheme_weight_variances(s, c, list(w))
    assert var[fc3] == s.weight_var[fc1]
    assert float(w[fc3].detach().double().pow(2).mean()) == pytest.approx(s.weight_var[fc1], rel=0.05)
    own = Scheme("own", {**s.weight_var, fc3: 1e-2}, s.merges)
    assert scheme_weight_variances(own, c, list(w))[fc3] == 1e-2
    with pytest.raises(ValueError, match="does not match the model's weights"):
        scheme_weight_variances(s, c, list(w) + ["layers.9.ffn.fc3.weight"])
    with pytest.raises(ValueError, match="scheme-only"):
        scheme_weight_variances(get_scheme(tiny(n_layers=3), "xavier"), tiny(), list(weight_parameters(
            build_model(tiny()))))


def test_norm_gains_start_at_one_and_are_not_decayed():
    from deepscalelm.train.optim import param_groups

    m = build_model(tiny(**LLAMA, qk_norm="rmsnorm"))
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(0.5)
    m.reset_parameters()
    gains = [n for n, p in m.named_parameters() if n.endswith("norm.weight") or ".ln." in n or n.startswith("ln_f")]
    assert gains and all(torch.equal(dict(m.named_parameters())[n], torch.ones_like(dict(m.named_parameters())[n]))
                         for n in gains)
    decay, _ = param_groups(m, 0.1)
    names = {id(p): n for n, p in m.named_parameters()}
    assert not {names[id(p)] for p in decay["params"]} & set(gains)


# ---------------------------------------------------------------------------------- measurement
def test_measure_and_check_find_the_new_modules():
    from deepscalelm.diagnostics import check
    from deepscalelm.measure import measure

    c = tiny(**LLAMA, qk_norm="rmsnorm", n_layers=2)
    m = build_model(c).eval()
    ids = batch(c)[0]
    traj = measure(m, ids)
    assert [r.key for r in traj] == [("", 0, "embedding"), ("", 1, "attn"), ("", 1, "ffn"), ("", 2, "attn"),
                                     ("", 2, "ffn"), ("", 2, "final_norm")]
    assert all(math.isfinite(r.var) and math.isfinite(r.grad_var) for r in traj)
    grab = {}
    attn = m.layers[1].attn
    hooks = [attn.q_post.register_forward_hook(lambda _m, _i, o: grab.setdefault("q", o.detach())),
             attn.k_post.register_forward_hook(lambda _m, _i, o: grab.setdefault("k", o.detach()))]
    rep = check(m, ids, protocol="paper")
    for h in hooks:
        h.remove()
    B, L, _ = grab["q"].shape
    q = grab["q"].view(B, L, 4, 8).transpose(1, 2).double()
    k = grab["k"].view(B, L, 2, 8).transpose(1, 2).repeat_interleave(2, dim=1).double()
    s = q @ k.transpose(-1, -2) / math.sqrt(8)
    mask = torch.ones(L, L, dtype=torch.bool).tril()
    n = mask.sum(-1).double()
    sv = s.masked_fill(~mask, 0)
    var = (sv ** 2).sum(-1) / n - (sv.sum(-1) / n) ** 2
    entry = next(a for a in rep.attention if a["name"] == "layers.1.attn")
    for hd in range(4):
        assert entry["logit_var"][hd] == pytest.approx(float(var[:, hd, 1:].mean()), rel=1e-5)
    assert [r["block"] for r in rep.rows][-1] == "final_norm"


# ----------------------------------------------------------------------------------------- preset
def test_llama_preset_trains_three_steps(tmp_path):
    import json

    from train_helpers import tiny_train_config  # tests/ is on sys.path

    from deepscalelm.train.config import preset
    from deepscalelm.train.loop import train

    mcfg, _ = preset("llama")
    assert (mcfg.norm, mcfg.norm_type, mcfg.activation, mcfg.position, mcfg.bias, mcfg.arch) == \
        ("pre", "rmsnorm", "swiglu", "rope", False, "decoder")
    assert mcfg.kv_heads < mcfg.n_heads and mcfg.n_heads % mcfg.kv_heads == 0
    small = mcfg.replace(n_layers=2, seq_len=32)
    t = tiny_train_config(tmp_path, max_steps=3, eval_interval=3, ckpt_interval=3)
    train(tmp_path / "run", small, t, progress=False, log=lambda *_: None)
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if "loss" in r and "val_loss" not in r]
    assert len(losses) == 3 and all(math.isfinite(x) and x > 0 for x in losses)
