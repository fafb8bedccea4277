"""check() on tiny Hugging Face models built from configs (no downloads): presets and q/k reading.

The attention entropy recomputed on the side from q and k must equal the entropy of the
attention probabilities the model itself returns (eager attention, output_attentions=True); for
Llama this checks the rotary embedding, for GPT-2 the split of the fused c_attn, for Qwen3 the
per-head QK-norm (applied before the rotary embedding).
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from deepscalelm import DSLMError  # noqa: E402
from deepscalelm.diagnostics import check  # noqa: E402

torch.set_num_threads(1)


def _entropy_from_model(model, ids):
    with torch.no_grad():
        out = model(ids, output_attentions=True)
    ents = []
    for p in out.attentions:  # [B, H, L, S]
        p = p.double()
        ents.append((-(p * torch.log(p.clamp_min(1e-300))).sum(-1)).mean(dim=(0, 2)))
    return ents


def _build(name):
    torch.manual_seed(0)
    if name == "gpt2":
        cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=32, vocab_size=64,
                                      attn_implementation="eager")
        return transformers.GPT2LMHeadModel(cfg).eval(), ["transformer.h.0", "transformer.h.1", "transformer.ln_f"]
    if name == "bert":
        cfg = transformers.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                                      intermediate_size=64, vocab_size=64, max_position_embeddings=32,
                                      attn_implementation="eager")
        return transformers.BertForMaskedLM(cfg).eval(), ["bert.encoder.layer.0", "bert.encoder.layer.1"]
    if name == "qwen3":
        cfg = transformers.Qwen3Config(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                                       num_key_value_heads=2, head_dim=8, intermediate_size=64, vocab_size=64,
                                       max_position_embeddings=32, attn_implementation="eager")
        model = transformers.Qwen3ForCausalLM(cfg).eval()
        with torch.no_grad():  # non-unit gains, so that a missed or misplaced norm changes the logits
            for n, p in model.named_parameters():
                if n.endswith(("q_norm.weight", "k_norm.weight")):
                    p.copy_(torch.empty_like(p).uniform_(0.5, 3.0))
        return model, ["model.layers.0", "model.layers.1", "model.norm"]
    cfg = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=64, vocab_size=64, max_position_embeddings=32,
                                   attn_implementation="eager")
    return transformers.LlamaForCausalLM(cfg).eval(), ["model.layers.0", "model.layers.1", "model.norm"]


@pytest.mark.parametrize("name", ["gpt2", "bert", "llama", "qwen3"])
def test_presets_and_attention_entropy(name):
    model, names = _build(name)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "labels": ids} if name == "bert" else ids
    rep = check(model, batch)
    assert rep.meta["preset"] == name
    assert [r["name"] for r in rep.rows] == names
    assert all(r["grad_var"] > 0 for r in rep.rows)
    assert rep.weights and all(w["grad_norm"] is not None for w in rep.weights if "embed" not in w["name"]
                               and "wte" not in w["name"])
    ref = _entropy_from_model(model, ids)
    assert len(rep.attention) == 2
    for entry, want in zip(rep.attention, ref, strict=True):
        assert entry["entropy"] == pytest.approx(want.tolist(), rel=1e-4)


def test_custom_names_and_errors():
    model, _ = _build("gpt2")
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(1))
    rep = check(model, ids, streams="transformer.h.*", attention="transformer.h.*.attn", causal=True,
                protocol="paper")
    assert [r["name"] for r in rep.rows] == ["transformer.h.0", "transformer.h.1"]
    assert rep.rows[0]["entropy"] is not None
    with pytest.raises(DSLMError, match="transformer.h.0"):
        check(model, ids, streams=["transformer.h.O"])
    with pytest.raises(DSLMError, match="no q/k projection children"):
        check(model, ids, streams="transformer.h.*", attention="transformer.h.*.mlp")


def _attn_specs(model):
    from deepscalelm.diagnostics import resolve_targets

    return resolve_targets(model)[1]


def test_qwen3_qk_norm_is_applied_and_unnamed_norm_warns():
    model, _ = _build("qwen3")
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    specs = _attn_specs(model)
    assert [(s.q_norm, s.k_norm) for s in specs] == [(f"model.layers.{i}.self_attn.q_norm",
                                                      f"model.layers.{i}.self_attn.k_norm") for i in range(2)]
    ref = _entropy_from_model(model, ids)
    # the statistics from the raw projections (what was read before QK-norm was applied; naming the
    # projections as the 'norms' reproduces that) are wrong
    from deepscalelm.diagnostics import AttentionSpec

    raw = [AttentionSpec(s.name, s.n_heads, s.n_kv_heads, s.causal, q=s.q, k=s.k, rotary=True,
                         q_norm=f"{s.q}", k_norm=f"{s.k}") for s in specs]
    rep_raw = check(model, ids, attention=raw)
    for entry, want in zip(rep_raw.attention, ref, strict=True):
        assert entry["entropy"] != pytest.approx(want.tolist(), rel=1e-2)
    # a spec that does not name the model's q/k norm gives a warning, never a number
    bare = [AttentionSpec(s.name, s.n_heads, s.n_kv_heads, s.causal, q=s.q, k=s.k, rotary=True) for s in specs]
    rep = check(model, ids, attention=bare)
    assert rep.attention == []
    assert all(r["entropy"] is None for r in rep.rows)
    warned = [v for v in rep.verdicts if v.kind == "attention_unsupported"]
    assert [v.name for v in warned] == [s.name for s in specs]
    assert "q_norm" in warned[0].message


def test_qk_norm_not_reproducible_warns():
    model, _ = _build("qwen3")
    for layer in model.model.layers:
        del layer.self_attn.k_norm
        layer.self_attn.k_norm = lambda x: x  # a plain function: nothing to hook
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    rep = check(model, ids)
    assert rep.attention == []
    msgs = [v.message for v in rep.verdicts if v.kind == "attention_unsupported"]
    assert len(msgs) == 2 and "k_norm=function" in msgs[0]
