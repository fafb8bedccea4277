"""Rotary (and absent) positions add no embedding table: DSLM gives the token table the whole
embedding variance, and the embedding correlation is the token table's alone."""

from __future__ import annotations

import pytest

from deepscalelm import ModelConfig
from deepscalelm.theory.naming import n_embedding_tables, weight_shapes
from deepscalelm.theory.schemes import embedding_corr, get_scheme


@pytest.mark.parametrize("position", ["rope", "none"])
def test_no_position_table_without_learned_positions(position):
    cfg = ModelConfig(arch="decoder", n_layers=4, d_model=32, n_heads=4, vocab_size=64, seq_len=16,
                      position=position, scheme="dslm", emb_dropout=0.1)
    learned = cfg.replace(position="learned")
    assert (n_embedding_tables(cfg), n_embedding_tables(learned)) == (1, 2)
    assert "pos_emb.weight" not in weight_shapes(cfg) and "pos_emb.weight" in weight_shapes(learned)
    assert get_scheme(cfg).var("tok_emb.weight") == pytest.approx(0.9)
    assert get_scheme(learned).var("tok_emb.weight") == pytest.approx(0.45)
    assert embedding_corr(cfg) == pytest.approx(2 * embedding_corr(learned))


def test_encoder_token_types_still_count_with_rope():
    cfg = ModelConfig(arch="encoder", n_layers=2, d_model=32, n_heads=4, vocab_size=64, seq_len=16,
                      position="rope", n_token_types=2)
    assert n_embedding_tables(cfg) == 2
    assert embedding_corr(cfg) == pytest.approx((cfg.token_repeat_prob + 1.0) / 2)


def test_own_rope_model_gets_unit_embedding_under_dslm():
    torch = pytest.importorskip("torch")
    from deepscalelm.models import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="decoder", n_layers=2, d_model=64, n_heads=4, vocab_size=512, seq_len=16,
                                    position="rope", scheme="dslm", emb_dropout=0.0))
    assert model.tok_emb.weight.var().item() == pytest.approx(1.0, rel=0.05)
