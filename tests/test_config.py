import math

import pytest

from deepscalelm import ModelConfig


def test_defaults_are_consistent():
    c = ModelConfig()
    assert c.ffn_dim == 4 * c.d_model and c.d_head * c.n_heads == c.d_model
    assert c.emb_p == c.dropout


@pytest.mark.parametrize("field,value,needle", [
    ("dropout", 1.0, "dropout must be in [0.0, 1.0)"),
    ("dropout", -0.1, "dropout must be in [0.0, 1.0)"),
    ("attn_dropout", 1.5, "attn_dropout"),
    ("n_layers", 0, "n_layers must be an integer >= 1"),
    ("d_model", 130, "divisible by n_heads"),
    ("scheme", "magic", "scheme must be one of"),
    ("arch", "rnn", "arch must be one of"),
    ("norm", "middle", "norm must be one of"),
    ("r0", 1.5, "r0 must be in (0.0, 1.0]"),
    ("same_token_prob", -0.2, "same_token_prob"),
    ("k", 0.0, "k must be in (0.0, inf)"),
    ("k", math.nan, "k must be"),
    ("n_layers", 2.5, "n_layers must be an integer"),
])
def test_bad_values_name_the_argument(field, value, needle):
    with pytest.raises(ValueError, match=None) as info:
        ModelConfig(**{field: value})
    assert needle in str(info.value)


def test_deepnet_requires_post_ln():
    with pytest.raises(ValueError, match="Post-LN"):
        ModelConfig(scheme="deepnet", norm="pre")
    ModelConfig(scheme="deepnet", norm="post")


def test_vit_sequence_length_is_derived():
    c = ModelConfig(arch="vit", image_size=28, patch_size=4)
    assert c.seq_len == 7 * 7 + 1
    with pytest.raises(ValueError, match="divisible by patch_size"):
        ModelConfig(arch="vit", image_size=28, patch_size=5)


def test_round_trip_and_unknown_keys():
    c = ModelConfig(n_layers=7, scheme="gpt2")
    assert ModelConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        ModelConfig.from_dict({"n_layer": 3})


def test_zipf_estimate_matches_reviewer_value():
    # the paper's Zipf embedding correlation: |V| = 30522 gives 0.0138 with the Euler-Mascheroni constant
    assert ModelConfig(vocab_size=30522).token_repeat_prob == pytest.approx(0.0138, abs=5e-5)
