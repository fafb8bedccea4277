"""`ModelConfig` fields from a Hugging Face model configuration (torch- and transformers-free).

`config_from_hf(hf_config)` reads a ``transformers.PretrainedConfig`` or the dict of a ``config.json``
and returns the `deepscalelm.ModelConfig` of the same architecture *with the Hugging Face default
initialisation* as its scheme (GPT-2: ``"gpt2"``, N(0, initializer_range^2) with the residual output
projections scaled by 1/sqrt(2 n_layer); BERT/RoBERTa: ``"normal"``, N(0, initializer_range^2)).
Keyword overrides replace fields afterwards (``scheme="dslm"``, ``k=...``, ``seq_len=...``).

Covered families: GPT-2 (``model_type`` ``"gpt2"``), BERT (``"bert"``), RoBERTa (``"roberta"``) and
the Llama family (``"llama"``, ``"mistral"``, ``"qwen2"``, ``"qwen3"``; scheme ``"normal"`` with
std ``initializer_range``): ``norm_type="rmsnorm"``, a gated MLP (``hidden_act`` silu ->
``"swiglu"``, gelu -> ``"geglu"``), ``position="rope"`` with ``rope_base`` = ``rope_theta``,
``n_kv_heads`` = ``num_key_value_heads``, ``qk_norm="rmsnorm"`` for Qwen3, no dropout outside
attention. What the config cannot express is left out and does not change the initialisation
`deepscalelm.apply` draws: RoPE scaling (``rope_type`` other than default), Mistral/Qwen2 sliding
windows, Qwen2's q/k/v biases (zero at initialisation). `deepscalelm.predict` refuses these
configs for now (it has no formula yet for rotary positions, grouped-query attention or QK-norm).
T5 is refused until the theory covers relative position bias and T5's unscaled logits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from .config import ModelConfig

#: model_type values whose theory is not in deepscalelm yet, with what is missing
PENDING: dict[str, str] = {
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


#: Hugging Face activation names of gated (Llama-family) MLPs -> ModelConfig.activation
_GATED = {"silu": "swiglu", "swish": "swiglu", "gelu": "geglu", "gelu_new": "geglu",
          "gelu_pytorch_tanh": "geglu"}

LLAMA_FAMILY = ("llama", "mistral", "qwen2", "qwen3")


def _rope_base(cfg: Any) -> float:
    """``rope_theta`` (transformers 4.x top-level field, 5.x inside ``rope_parameters``)."""
    params = _get(cfg, "rope_parameters") or {}
    theta = params.get("rope_theta") if isinstance(params, Mapping) else None
    return float(theta if theta is not None else _get(cfg, "rope_theta", 10000.0))


def _llama(cfg: Any, model_type: str) -> dict[str, Any]:
    d, heads = _get(cfg, "hidden_size"), _get(cfg, "num_attention_heads")
    head_dim = _get(cfg, "head_dim")
    if head_dim is not None and d is not None and heads and head_dim * heads != d:
        raise ValueError(f"ModelConfig.from_hf: {model_type} with head_dim={head_dim} != hidden_size / "
                         f"num_attention_heads = {d}/{heads} is not covered (ModelConfig has d_head = d_model / "
                         "n_heads); set head_dim to hidden_size // num_attention_heads")
    act = _get(cfg, "hidden_act", "silu")
    if act not in _GATED:
        raise ValueError(f"ModelConfig.from_hf: {model_type} hidden_act={act!r} is not covered by the theory; "
                         f"supported: {', '.join(sorted(_GATED))}")
    kv = _get(cfg, "num_key_value_heads")
    return dict(arch="decoder", n_layers=_get(cfg, "num_hidden_layers"), d_model=d, n_heads=heads,
                n_kv_heads=int(kv) if kv is not None else None, d_ff=_get(cfg, "intermediate_size"),
                seq_len=_get(cfg, "max_position_embeddings"), vocab_size=_get(cfg, "vocab_size"), norm="pre",
                norm_type="rmsnorm", activation=_GATED[act], position="rope", rope_base=_rope_base(cfg),
                qk_norm="rmsnorm" if model_type == "qwen3" else None, dropout=0.0,
                attn_dropout=float(_get(cfg, "attention_dropout", 0.0) or 0.0), emb_dropout=0.0,
                scheme="normal", std=float(_get(cfg, "initializer_range", 0.02)),
                tie_embeddings=bool(_get(cfg, "tie_word_embeddings", False)),
                bias=bool(_get(cfg, "attention_bias", False) or _get(cfg, "mlp_bias", False)),
                ln_eps=float(_get(cfg, "rms_norm_eps", 1e-6)))


SUPPORTED = ("gpt2", "bert", "roberta", *LLAMA_FAMILY)


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
    elif model_type in LLAMA_FAMILY:
        fields = _llama(hf_config, model_type)
    else:
        raise ValueError(f"ModelConfig.from_hf: unsupported model_type {model_type!r}; supported: "
                         f"{', '.join(SUPPORTED)} (docs/hf.md shows how to describe other models)")
    for name, value in list(fields.items()):
        if value is None and name not in ("d_ff", "n_kv_heads", "qk_norm"):
            raise ValueError(f"ModelConfig.from_hf: the {model_type} config lacks the field needed for {name}")
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"ModelConfig.from_hf: unknown ModelConfig field(s) {unknown}; known fields: {sorted(known)}")
    fields.update(overrides)
    return ModelConfig(**fields)


__all__ = ["config_from_hf", "SUPPORTED", "PENDING", "LLAMA_FAMILY"]
