"""`ModelConfig` fields from a Hugging Face model configuration (torch- and transformers-free).

`config_from_hf(hf_config)` reads a ``transformers.PretrainedConfig`` or the dict of a ``config.json``
and returns the `deepscalelm.ModelConfig` of the same architecture *with the Hugging Face default
initialisation* as its scheme (GPT-2: ``"gpt2"``, N(0, initializer_range^2) with the residual output
projections scaled by 1/sqrt(2 n_layer); BERT/RoBERTa: ``"normal"``, N(0, initializer_range^2)).
Keyword overrides replace fields afterwards (``scheme="dslm"``, ``k=...``, ``seq_len=...``).

Covered families: GPT-2 (``model_type`` ``"gpt2"``), BERT (``"bert"``) and RoBERTa (``"roberta"``).
Llama-style and T5 families are refused until the theory covers their blocks (RMSNorm, SwiGLU,
rotary positions, grouped-query attention, QK-norm, T5's relative position bias).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from .config import ModelConfig

#: model_type values whose theory is not in deepscalelm yet, with what is missing
PENDING: dict[str, str] = {
    "llama": "RMSNorm, SwiGLU, rotary positions and grouped-query attention",
    "mistral": "RMSNorm, SwiGLU, rotary positions and grouped-query attention",
    "qwen2": "RMSNorm, SwiGLU, rotary positions and grouped-query attention",
    "qwen3": "RMSNorm, SwiGLU, rotary positions, grouped-query attention and QK-norm",
    "gemma": "RMSNorm, GeGLU, rotary positions and multi-query attention",
    "t5": "RMSNorm, relative position bias and T5's unscaled logits",
    "mt5": "RMSNorm, relative position bias and T5's unscaled logits",
}

#: Hugging Face activation names -> ModelConfig.activation (tanh GeLU approximations count as GeLU:
#: their second moment at unit input differs from the exact GeLU's by less than 1e-3)
_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu_fast": "gelu",
                "gelu_python": "gelu", "relu": "relu"}


def _get(cfg: Any, name: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def _activation(cfg: Any, field: str) -> str:
    act = _get(cfg, field, "gelu")
    if act not in _ACTIVATIONS:
        raise ValueError(f"ModelConfig.from_hf: {field}={act!r} is not covered by the theory; "
                         f"supported: {', '.join(sorted(_ACTIVATIONS))}")
    return _ACTIVATIONS[act]


def _gpt2(cfg: Any) -> dict[str, Any]:
    if _get(cfg, "scale_attn_by_inverse_layer_idx", False):
        raise ValueError("ModelConfig.from_hf: GPT-2 with scale_attn_by_inverse_layer_idx=True is not covered "
                         "by the theory (attention logits scaled by 1/layer); set it to False")
    if not _get(cfg, "scale_attn_weights", True):
        raise ValueError("ModelConfig.from_hf: GPT-2 with scale_attn_weights=False is not covered by the "
                         "theory (logits are assumed scaled by 1/sqrt(d_head))")
    if _get(cfg, "add_cross_attention", False):
        raise ValueError("ModelConfig.from_hf: GPT-2 with add_cross_attention=True is not covered yet")
    return dict(arch="decoder", n_layers=_get(cfg, "n_layer"), d_model=_get(cfg, "n_embd"),
                n_heads=_get(cfg, "n_head"), d_ff=_get(cfg, "n_inner"), seq_len=_get(cfg, "n_positions"),
                vocab_size=_get(cfg, "vocab_size"), norm="pre", activation=_activation(cfg, "activation_function"),
                dropout=float(_get(cfg, "resid_pdrop", 0.1)), attn_dropout=float(_get(cfg, "attn_pdrop", 0.1)),
                emb_dropout=float(_get(cfg, "embd_pdrop", 0.1)), scheme="gpt2",
                std=float(_get(cfg, "initializer_range", 0.02)),
                tie_embeddings=bool(_get(cfg, "tie_word_embeddings", True)),
                ln_eps=float(_get(cfg, "layer_norm_epsilon", 1e-5)))


def _bert(cfg: Any, model_type: str) -> dict[str, Any]:
    if _get(cfg, "is_decoder", False) or _get(cfg, "add_cross_attention", False):
        raise ValueError(f"ModelConfig.from_hf: {model_type} with is_decoder/add_cross_attention is not covered "
                         "(the encoder theory is bidirectional, without cross-attention)")
    pos_type = _get(cfg, "position_embedding_type", "absolute")
    if pos_type not in (None, "absolute"):
        raise ValueError(f"ModelConfig.from_hf: position_embedding_type={pos_type!r} is not covered; "
                         "supported: 'absolute'")
    seq_len = int(_get(cfg, "max_position_embeddings"))
    if model_type == "roberta":  # RoBERTa's positions start after the padding index
        seq_len -= int(_get(cfg, "pad_token_id", 1) or 0) + 1
    hidden_p = float(_get(cfg, "hidden_dropout_prob", 0.1))
    return dict(arch="encoder", n_layers=_get(cfg, "num_hidden_layers"), d_model=_get(cfg, "hidden_size"),
                n_heads=_get(cfg, "num_attention_heads"), d_ff=_get(cfg, "intermediate_size"), seq_len=seq_len,
                vocab_size=_get(cfg, "vocab_size"), norm="post", activation=_activation(cfg, "hidden_act"),
                dropout=hidden_p, attn_dropout=float(_get(cfg, "attention_probs_dropout_prob", 0.1)),
                emb_dropout=hidden_p, scheme="normal", std=float(_get(cfg, "initializer_range", 0.02)),
                n_token_types=int(_get(cfg, "type_vocab_size", 2)),
                tie_embeddings=bool(_get(cfg, "tie_word_embeddings", True)),
                ln_eps=float(_get(cfg, "layer_norm_eps", 1e-12)))


SUPPORTED = ("gpt2", "bert", "roberta")


def config_from_hf(hf_config: Any, **overrides: Any) -> ModelConfig:
    """The `ModelConfig` of a Hugging Face configuration (see module docstring); ValueError if not covered."""
    model_type = _get(hf_config, "model_type")
    if model_type is None:
        raise ValueError(f"ModelConfig.from_hf: {type(hf_config).__name__} has no model_type; expected a "
                         f"transformers PretrainedConfig or a config.json dict of one of: {', '.join(SUPPORTED)}")
    if model_type in PENDING:
        raise ValueError(f"ModelConfig.from_hf: model_type {model_type!r} needs the theory of "
                         f"{PENDING[model_type]}, which deepscalelm does not cover yet; supported: "
                         f"{', '.join(SUPPORTED)}")
    if model_type == "gpt2":
        fields = _gpt2(hf_config)
    elif model_type in ("bert", "roberta"):
        fields = _bert(hf_config, model_type)
    else:
        raise ValueError(f"ModelConfig.from_hf: unsupported model_type {model_type!r}; supported: "
                         f"{', '.join(SUPPORTED)} (docs/hf.md shows how to describe other models)")
    for name, value in list(fields.items()):
        if value is None and name != "d_ff":
            raise ValueError(f"ModelConfig.from_hf: the {model_type} config lacks the field needed for {name}")
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"ModelConfig.from_hf: unknown ModelConfig field(s) {unknown}; known fields: {sorted(known)}")
    fields.update(overrides)
    return ModelConfig(**fields)


__all__ = ["config_from_hf", "SUPPORTED", "PENDING"]
