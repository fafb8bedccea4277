"""check() on tiny Hugging Face models built from configs (no downloads): presets and q/k reading.

The attention entropy recomputed on the side from q and k must equal the entropy of the
attention probabilities the model itself returns (eager attention, output_attentions=True); for
Llama this checks the rotary embedding, for GPT-2 the split of the fused c_attn.
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
    cfg = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=64, vocab_size=64, max_position_embeddings=32,
                                   attn_implementation="eager")
    return transformers.LlamaForCausalLM(cfg).eval(), ["model.layers.0", "model.layers.1", "model.norm"]


@pytest.mark.parametrize("name", ["gpt2", "bert", "llama"])
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
