"""`deepscalelm.apply` and `ModelConfig.from_hf` on the Llama family (Llama, Mistral, Qwen2, Qwen3).

Tiny random models (4 layers, width 32, 4 query heads over 2 key/value heads) built from configs;
nothing is downloaded. The folded stock model is compared with an explicit lam/beta forward of the
same unfolded weights, and the saved checkpoint with its stock reload.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import deepscalelm
from deepscalelm import ModelConfig
from deepscalelm.fold import _initialise, stream_scales
from deepscalelm.structure import resolve
from deepscalelm.theory.model import predict
from deepscalelm.theory.schemes import get_scheme

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"head_dim": 8}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 8}),
}


def hf_config(family: str = "llama", n_layer: int = 4, d: int = 32, **kw):
    cfg_cls, _model_cls, extra = FAMILIES[family]
    return getattr(transformers, cfg_cls)(
        num_hidden_layers=n_layer, hidden_size=d, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=2 * d, vocab_size=256, max_position_embeddings=64, attn_implementation="sdpa",
        **{**extra, **kw})


def make(family: str = "llama", **kw) -> nn.Module:
    model_cls = getattr(transformers, FAMILIES[family][1])
    return model_cls(hf_config(family, **kw)).eval()


def ids(n: int = 2, length: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, length), generator=torch.Generator().manual_seed(seed))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm())


def llama_explicit(model: nn.Module, x_ids: torch.Tensor, merges: list[tuple[float, float]],
                   head_scale: float = 1.0) -> torch.Tensor:
    """Llama with x <- lam x + beta F(RMSNorm(x)) per block, from the model's own modules."""
    m = model.model
    x = m.embed_tokens(x_ids)
    pe = m.rotary_emb(x, torch.arange(x_ids.shape[1])[None])
    it = iter(merges)
    for layer in m.layers:
        lam, beta = next(it)
        x = lam * x + beta * layer.self_attn(layer.input_layernorm(x), position_embeddings=pe,
                                             attention_mask=None)[0]
        lam, beta = next(it)
        x = lam * x + beta * layer.mlp(layer.post_attention_layernorm(x))
    return model.lm_head(head_scale * m.norm(x))


def _dslm(model: nn.Module) -> tuple[ModelConfig, object]:
    cfg = ModelConfig.from_hf(model.config, scheme="dslm")
    return cfg, get_scheme(cfg)


def test_from_hf_maps_the_llama_family():
    c = ModelConfig.from_hf(hf_config("llama"))
    assert (c.arch, c.norm, c.norm_type, c.activation, c.position, c.n_kv_heads, c.qk_norm, c.bias) == \
        ("decoder", "pre", "rmsnorm", "swiglu", "rope", 2, None, False)
    assert (c.scheme, c.std, c.ln_eps, c.d_ff, c.seq_len, c.rope_base, c.tie_embeddings) == \
        ("normal", 0.02, 1e-6, 64, 64, 10000.0, False)
    assert (c.dropout, c.emb_dropout) == (0.0, 0.0)
    assert ModelConfig.from_hf(hf_config("qwen3")).qk_norm == "rmsnorm"
    assert ModelConfig.from_hf(hf_config("mistral", rope_theta=5e5).to_dict()).rope_base == 5e5
    assert ModelConfig.from_hf(hf_config("llama", hidden_act="gelu_pytorch_tanh")).activation == "geglu"
    with pytest.raises(ValueError, match="head_dim=16 != hidden_size / num_attention_heads"):
        ModelConfig.from_hf(hf_config("qwen3", head_dim=16))
    with pytest.raises(ValueError, match="hidden_act='relu' is not covered"):
        ModelConfig.from_hf(hf_config("llama", hidden_act="relu"))


def test_predict_covers_llama_and_refuses_qwen3_rope_with_qk_norm_clearly():
    traj = predict(ModelConfig.from_hf(hf_config("llama"), scheme="dslm"))
    assert all(abs(v - 1.0) < 0.05 for v in traj.column("var")[1:])  # DSLM: unit stream variance
    with pytest.raises(ValueError, match="together with position='rope' is not covered"):
        predict(ModelConfig.from_hf(hf_config("qwen3"), scheme="dslm"))


def test_explicit_forward_matches_stock_at_unit_merges():
    model, x = make(), ids()
    assert rel(llama_explicit(model, x, [(1.0, 1.0)] * 8), model(x).logits) < 1e-6


@pytest.mark.parametrize("family", list(FAMILIES))
def test_folded_equals_explicit_lambda_beta(family):
    x = ids()
    folded = deepscalelm.apply(make(family), "dslm", seed=3, k=2.0)
    reference = make(family)
    cfg, sch = _dslm(reference)
    cfg = cfg.replace(k=2.0)
    sch = get_scheme(cfg)
    _initialise(reference, resolve(reference), sch, 3)
    merges = [sch.merge(f"layers.{i}.{b}") for i in range(4) for b in ("attn", "ffn")]
    assert min(lam for lam, _ in merges) < 0.9  # the fold has something to do
    want = llama_explicit(reference, x, merges)
    assert rel(folded(x).logits, want) < 1e-5, rel(folded(x).logits, want)
    assert rel(reference(x).logits, want) > 1e-2  # without the fold it is another function


def test_tied_head_carries_head_scale_on_the_final_norm():
    x = ids()
    folded = deepscalelm.apply(make("qwen3", tie_word_embeddings=True), seed=1)
    assert folded.lm_head.weight is folded.model.embed_tokens.weight
    reference = make("qwen3", tie_word_embeddings=True)
    _cfg, sch = _dslm(reference)
    _initialise(reference, resolve(reference), sch, 1)
    merges = [sch.merge(f"layers.{i}.{b}") for i in range(4) for b in ("attn", "ffn")]
    head_scale = sch.scales["head_scale"]
    assert head_scale == pytest.approx(1 / (32 * sch.var("tok_emb.weight")) ** 0.5)
    assert folded.model.norm.weight[0].item() == pytest.approx(head_scale)
    assert rel(folded(x).logits, llama_explicit(reference, x, merges, head_scale)) < 1e-5


def test_gated_mlp_and_gqa_variances_follow_the_scheme():
    model = deepscalelm.apply(make("llama", n_layer=2, d=128), seed=0)
    _cfg, sch = _dslm(model)
    layer = model.model.layers[1]
    assert layer.self_attn.k_proj.weight.shape == (64, 128)  # 2 kv heads of 32
    for module, name in ((layer.mlp.gate_proj, "fc1"), (layer.mlp.up_proj, "fc3"), (layer.self_attn.q_proj, "q"),
                         (layer.self_attn.k_proj, "k")):
        block = "ffn" if name.startswith("fc") else "attn"
        want = sch.var(f"layers.1.{block}.{name}.weight")
        assert module.weight.var().item() == pytest.approx(want, rel=0.05), name
    lam, beta = sch.merge("layers.1.ffn")
    c = stream_scales(resolve(model), sch)[3]
    want = sch.var("layers.1.ffn.fc2.weight") * (beta / c) ** 2
    assert layer.mlp.down_proj.weight.var().item() == pytest.approx(want, rel=0.05)
    assert layer.self_attn.o_proj.bias is None and float(model.model.norm.weight.detach().min()) == 1.0


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_save_pretrained_round_trip(family, tmp_path):
    model = deepscalelm.apply(make(family), "dslm", seed=0)
    model.save_pretrained(tmp_path)
    again = getattr(transformers, FAMILIES[family][1]).from_pretrained(tmp_path).eval()
    x = ids()
    assert type(again) is type(model)
    assert rel(again(x).logits, model(x).logits) <= 1e-5
    assert again.config.deepscalelm_scheme["scheme"] == "dslm"


def test_apply_twice_and_on_meta_device():
    once = deepscalelm.apply(make(), seed=5)
    twice = deepscalelm.apply(deepscalelm.apply(make(), seed=9), seed=5)
    with torch.device("meta"):
        meta = make()
    fresh = deepscalelm.apply(meta, seed=5)
    x = ids()
    assert rel(twice(x).logits, once(x).logits) == 0.0
    assert rel(fresh.eval()(x).logits, once(x).logits) < 1e-6
