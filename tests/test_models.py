"""PyTorch models: naming contract, initialisation from a scheme, structure, inputs."""

from __future__ import annotations

import math

import pytest
import torch

from deepscalelm.config import ModelConfig
from deepscalelm.models import FAMILIES, apply_scheme, build_model
from deepscalelm.models.init import weight_parameters
from deepscalelm.theory.naming import merge_names, weight_shapes
from deepscalelm.theory.schemes import get_scheme

torch.set_num_threads(1)
ARCHS = ("decoder", "encoder", "encoder-decoder", "vit")


def tiny(arch: str = "decoder", norm: str = "pre", **kw) -> ModelConfig:
    base = dict(arch=arch, norm=norm, n_layers=2, d_model=32, n_heads=4, seq_len=16, vocab_size=64,
                image_size=8, patch_size=4, channels=3, n_classes=5)
    if arch == "encoder":
        base["n_token_types"] = 2
    base.update(kw)
    return ModelConfig(**base)


def example_batch(config: ModelConfig, B: int = 3) -> tuple:
    g = torch.Generator().manual_seed(0)
    if config.arch == "vit":
        return (torch.randn(B, config.channels, config.image_size, config.image_size, generator=g),)
    ids = torch.randint(0, config.vocab_size, (B, config.seq_len), generator=g)
    if config.arch == "encoder-decoder":
        return ids[:, : config.seq_len // 2], ids
    return (ids,)


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("extra", [{}, {"tie_embeddings": False, "bias": False}])
def test_weight_names_equal_contract(arch, norm, extra):
    config = tiny(arch, norm, scheme="xavier", **extra)
    model = build_model(config)
    shapes = {n: tuple(p.shape) for n, p in weight_parameters(model).items()}
    assert shapes == weight_shapes(config)
    merges = {n for n, m in model.named_modules() if hasattr(m, "lam")}
    assert merges == set(merge_names(config))
    assert (getattr(model, "ln_f", None) is not None) == (norm == "pre") or arch == "encoder-decoder"
    if not extra.get("bias", True):
        assert not [n for n, _ in model.named_parameters() if n.endswith(".bias") and "ln" not in n]


def _check_variances(model, scheme):
    # mean(w^2) of n iid N(0, s2) entries has relative std sqrt(2/n): allow 5 standard deviations
    for name, p in weight_parameters(model).items():
        p = p.detach()
        s2 = scheme.weight_var[name]
        n = p.numel()
        rel = float((p.double() ** 2).mean()) / s2 - 1.0
        assert abs(rel) < 5 * math.sqrt(2 / n), (name, rel, n)
        mean_tol = 5 * math.sqrt(s2 / n)
        assert abs(float(p.double().mean())) < mean_tol, name


@pytest.mark.parametrize("arch,norm,scheme", [
    ("decoder", "pre", "dslm"), ("decoder", "post", "dslm"), ("decoder", "pre", "xavier"),
    ("decoder", "pre", "gpt2"), ("encoder", "post", "deepnet"), ("encoder-decoder", "pre", "normal"),
    ("encoder-decoder", "post", "dslm"), ("vit", "pre", "dslm"), ("encoder", "pre", "dslm"),
])
def test_init_follows_scheme(arch, norm, scheme):
    torch.manual_seed(0)
    config = tiny(arch, norm, scheme=scheme, d_model=64, dropout=0.1)
    model = build_model(config)
    sch = get_scheme(config)
    assert model.scheme.name == scheme and model.config is config
    _check_variances(model, sch)
    for name, (lam, beta) in sch.merges.items():
        block = model.get_submodule(name)
        assert block.lam == pytest.approx(lam) and block.beta == pytest.approx(beta)
    assert model.head_scale == pytest.approx(sch.scales["head_scale"])
    for n, p in model.named_parameters():
        if n.endswith(".bias"):
            assert torch.all(p == 0), n
        elif ".ln" in n or n.startswith(("ln", "mlm_ln")) or "ln_f" in n:
            assert torch.all(p == 1), n


def test_dslm_lam_beta_values():
    config = tiny(n_layers=6, scheme="dslm")
    model = build_model(config)
    lam, beta = model.layers[3].ffn.lam, model.layers[3].ffn.beta
    assert beta ** 2 == pytest.approx(2.0 / 12)  # k / N, N = 12 residual blocks
    assert lam ** 2 + beta ** 2 == pytest.approx(1.0)


def test_merge_is_lam_x_plus_beta_f():
    config = tiny(scheme="xavier", dropout=0.0, attn_dropout=0.0)
    model = build_model(config).eval()
    block = model.layers[0].ffn
    block.lam, block.beta = 0.6, 0.8
    x = torch.randn(2, 5, 32)
    assert torch.allclose(block(x), 0.6 * x + 0.8 * block.f(block.ln(x)), atol=1e-6)
    post = build_model(tiny(norm="post", scheme="xavier", dropout=0.0)).eval().layers[0].attn
    post.lam, post.beta = 0.6, 0.8
    assert torch.allclose(post(x), post.ln(0.6 * x + 0.8 * post.f(x)), atol=1e-6)


def test_apply_scheme_idempotent_and_seeded():
    config = tiny(scheme="xavier")
    torch.manual_seed(3)
    a = build_model(config)
    sd_a = {k: v.clone() for k, v in a.state_dict().items()}
    with torch.no_grad():
        for p in a.parameters():
            p.add_(1.0)
    torch.manual_seed(3)
    a.reset_parameters()
    for k, v in a.state_dict().items():
        assert torch.equal(v, sd_a[k]), k
    torch.manual_seed(3)
    apply_scheme(a, "xavier")
    assert all(torch.equal(v, sd_a[k]) for k, v in a.state_dict().items())
    apply_scheme(a, "normal")
    assert a.scheme.name == "normal" and float(a.tok_emb.weight.detach().std()) == pytest.approx(0.02, rel=0.1)


@pytest.mark.parametrize("arch", ARCHS)
def test_meta_device_then_reset_parameters(arch):
    config = tiny(arch, scheme="gpt2")
    torch.manual_seed(7)
    ref = build_model(config)
    with torch.device("meta"):
        model = FAMILIES[arch](config)
    model.to_empty(device="cpu")
    model.scheme = get_scheme(config)
    torch.manual_seed(7)
    model.reset_parameters()
    for (n, p), (_, q) in zip(model.state_dict().items(), ref.state_dict().items(), strict=True):
        assert torch.equal(p, q), n


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("arch", ARCHS)
def test_output_shapes(arch, norm):
    config = tiny(arch, norm, scheme="xavier")
    model = build_model(config)
    out = model(*example_batch(config))
    if arch == "vit":
        assert out.shape == (3, config.n_classes)
    else:
        assert out.shape == (3, config.seq_len, config.vocab_size)
    assert torch.isfinite(out).all()
    out.float().square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_encoder_token_types():
    config = tiny("encoder", scheme="xavier")
    model = build_model(config).eval()
    ids = torch.randint(0, 64, (2, 16))
    tt = torch.zeros_like(ids)
    assert torch.allclose(model(ids), model(ids, tt))
    assert not torch.allclose(model(ids), model(ids, torch.ones_like(ids)))
    with pytest.raises(ValueError, match="token_type_ids must lie in"):
        model(ids, tt + 5)


def test_tied_head_and_scale():
    config = tiny(scheme="dslm", dropout=0.0)
    model = build_model(config).eval()
    ids = torch.randint(0, 64, (2, 16))
    expected = model.hidden(ids) * model.head_scale @ model.tok_emb.weight.T
    assert torch.allclose(model(ids), expected, atol=1e-5)


def test_causal_mask():
    config = tiny(scheme="xavier")
    model = build_model(config).eval()
    ids = torch.randint(0, 64, (2, 16))
    changed = ids.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 64
    a, b = model(ids), model(changed)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)
    assert not torch.allclose(a[:, 10:], b[:, 10:])
    enc = build_model(tiny("encoder", scheme="xavier")).eval()
    assert not torch.allclose(enc(ids)[:, :10], enc(changed)[:, :10])  # bidirectional
    ed = build_model(tiny("encoder-decoder", scheme="xavier")).eval()
    src = torch.randint(0, 64, (2, 8))
    assert torch.allclose(ed(src, ids)[:, :10], ed(src, changed)[:, :10], atol=1e-6)


def test_dropout_only_in_training():
    config = tiny(scheme="xavier", dropout=0.3, attn_dropout=0.3)
    model = build_model(config)
    ids = torch.randint(0, 64, (2, 16))
    model.eval()
    assert torch.equal(model(ids), model(ids))
    model.train()
    assert not torch.equal(model(ids), model(ids))


def test_activation_checkpointing_same_gradients():
    config = tiny(n_layers=3, scheme="xavier")
    model = build_model(config)
    ids = torch.randint(0, 64, (2, 16))

    def grads():
        model.zero_grad()
        torch.manual_seed(11)  # same dropout masks
        model.loss(ids).backward()
        return [p.grad.clone() for p in model.parameters()]

    g0 = grads()
    model.set_activation_checkpointing(True)
    g1 = grads()
    assert model.checkpointing
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g0, g1, strict=True))


@pytest.mark.parametrize("bad,match", [
    (torch.rand(2, 16), "integer tensor"),
    (torch.full((2, 16), 64), r"must lie in \[0, 63\]"),
    (torch.full((2, 16), -1), r"must lie in \[0, 63\]"),
    (torch.zeros(2, 17, dtype=torch.long), "seq_len=16"),
    (torch.zeros(16, dtype=torch.long), r"shape \[batch, length\]"),
])
def test_bad_token_inputs(bad, match):
    model = build_model(tiny(scheme="xavier"))
    with pytest.raises(ValueError, match=match):
        model(bad)


def test_bad_image_and_config_inputs():
    config = tiny("vit", scheme="xavier")
    model = build_model(config)
    with pytest.raises(ValueError, match=r"shape \[batch, 3, 8, 8\]"):
        model(torch.randn(2, 3, 9, 9))
    with pytest.raises(ValueError, match="floating-point"):
        model(torch.zeros(2, 3, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible by n_heads"):
        build_model(tiny(d_model=30))
    with pytest.raises(ValueError, match="does not match the model's weights"):
        apply_scheme(build_model(tiny(scheme="xavier")), get_scheme(tiny(n_layers=3, scheme="xavier")))
    with pytest.raises(ValueError, match="scheme must be one of"):
        build_model(tiny(), "kaiming")
    ed = build_model(tiny("encoder-decoder", scheme="xavier"))
    with pytest.raises(ValueError, match="batch size"):
        ed(torch.zeros(2, 4, dtype=torch.long), torch.zeros(3, 4, dtype=torch.long))


def test_bf16_autocast_runs():
    model = build_model(tiny(scheme="dslm"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.loss(torch.randint(0, 64, (2, 16)))
    loss.backward()
    assert torch.isfinite(loss)
