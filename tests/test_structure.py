"""The structure registry and `deepscalelm.apply` on deepscalelm's own models (no transformers needed)."""

from __future__ import annotations

import pytest
import torch

import deepscalelm
from deepscalelm import ModelConfig
from deepscalelm.models import GPT
from deepscalelm.structure import Structure, families, own_structure, resolve

CFG = ModelConfig(n_layers=3, d_model=32, n_heads=4, seq_len=16, dropout=0.0, attn_dropout=0.0)


def test_apply_on_own_model_is_seeded_and_sets_the_scheme():
    a = deepscalelm.apply(deepscalelm.build_model(CFG), "xavier", seed=1)
    b = deepscalelm.apply(deepscalelm.apply(deepscalelm.build_model(CFG), "normal", seed=9), "xavier", seed=1)
    assert a.scheme.name == "xavier" and a.config.scheme == "xavier"
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), n
    assert all(blk.lam == 1.0 for layer in a.layers for blk in (layer.attn, layer.ffn))
    d = deepscalelm.apply(a, "dslm", k=1.0)
    assert d.layers[0].attn.beta == pytest.approx((1.0 / 6) ** 0.5)  # beta^2 = k / (2 n_layers)


def test_apply_materialises_an_own_meta_model():
    with torch.device("meta"):
        meta = GPT(CFG)
    model = deepscalelm.apply(meta, "dslm", seed=0)
    want = deepscalelm.apply(deepscalelm.build_model(CFG), "dslm", seed=0)
    ids = torch.randint(0, 256, (2, 8))
    assert torch.equal(model.eval()(ids), want.eval()(ids))


def test_own_structure_names_every_part():
    model = deepscalelm.build_model(CFG.replace(arch="encoder-decoder", n_layers=2))
    enc, dec = own_structure(model)
    assert enc.layers[1].parts["attn_out"] == "encoder.layers.1.attn.o"
    assert dec.stream_points[-1] == "decoder.ln_f" and len(dec.layers) == 2
    assert "deepscalelm" in families() and "gpt2" in families()


def test_structure_and_register_validate_their_fields():
    with pytest.raises(ValueError, match="norm must be 'pre' or 'post'"):
        Structure(family="x", blocks="h", q="q", k="k", v="v", attn_out="o", mlp_in="a", mlp_out="b", norm="mid")
    with pytest.raises(ValueError, match="give q, k and v, or one fused qkv"):
        Structure(family="x", blocks="h", q="q", attn_out="o", mlp_in="a", mlp_out="b")
    with pytest.raises(ValueError, match="needs mlp_in, mlp_out"):
        deepscalelm.register("Foo", blocks="h", qkv="attn", attn_out="o")
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['mlp_up'\]"):
        deepscalelm.register("Foo", blocks="h", qkv="a", attn_out="o", mlp_in="i", mlp_out="j", mlp_up="u")


def test_resolve_reports_a_wrong_block_path():
    s = Structure(family="mine", blocks="blocks", qkv="attn", attn_out="o", mlp_in="a", mlp_out="b")
    want = "has no block list 'blocks'; top-level modules: tok_emb, pos_emb, drop_emb, layers"
    with pytest.raises(deepscalelm.DSLMError, match=want):
        resolve(deepscalelm.build_model(CFG), s)


def test_register_by_model_type_is_found_through_the_config():
    from types import SimpleNamespace

    from deepscalelm import structure

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = SimpleNamespace(model_type="tiny-test")
            block = torch.nn.Module()
            block.qkv, block.o = torch.nn.Linear(8, 24), torch.nn.Linear(8, 8)
            block.up, block.down = torch.nn.Linear(8, 32), torch.nn.Linear(32, 8)
            self.blocks = torch.nn.ModuleList([block])

    deepscalelm.register("model_type:tiny-test", family="tiny", blocks="blocks", qkv="qkv", attn_out="o",
                         mlp_in="up", mlp_out="down")
    try:
        res = resolve(Tiny())
        assert res.structure.family == "tiny" and res.layers[0].parts["mlp_out"] == "blocks.0.down"
    finally:
        structure._BY_TYPE.pop("tiny-test")
