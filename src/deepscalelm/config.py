"""The one model description shared by the theory and the PyTorch models.

`ModelConfig` is a frozen dataclass, validated on construction, free of torch. The same object is
passed to `deepscalelm.predict` (closed-form moments) and `deepscalelm.build_model` (a PyTorch model),
so a prediction and a measurement always refer to the same architecture and initialisation scheme.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ARCHS = ("decoder", "encoder", "encoder-decoder", "vit")
NORMS = ("pre", "post")
ACTIVATIONS = ("relu", "gelu", "silu", "swiglu", "geglu")
GATED_ACTIVATIONS = ("swiglu", "geglu")
NORM_TYPES = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "rope", "none")
QK_NORMS = (None, "rmsnorm", "layernorm")
SCHEMES = ("dslm", "xavier", "normal", "gpt2", "deepnet", "completep")
DEPTH_UNITS = ("blocks", "layers")


def _check_range(name: str, value: float, lo: float, hi: float, *, lo_open: bool = False,
                 hi_open: bool = False) -> None:
    """Raise ValueError naming `name` unless lo <(=) value <(=) hi."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        raise ValueError(f"{name} must be in {left}{lo}, {hi}{right}, got {value!r}")


def _check_int(name: str, value: Any, lo: int, hi: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be an integer {rng}, got {value!r}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")


class DictConfig:
    """``replace`` / ``to_dict`` / ``from_dict`` for frozen config dataclasses (validated again)."""

    def replace(self, **changes: Any):
        """A copy with some fields changed (validated again)."""
        me: Any = self  # the mixin is only used on dataclasses
        return dataclasses.replace(me, **changes)

    def to_dict(self) -> dict[str, Any]:
        me: Any = self
        return dataclasses.asdict(me)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        """Build from a mapping; a non-mapping or unknown keys raise ValueError listing the known fields."""
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]  # a dataclass subclass
        if not isinstance(data, Mapping):
            raise ValueError(f"{cls.__name__} expects an object of fields {sorted(known)}, "
                             f"got {type(data).__name__} {data!r}"[:300])
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**dict(data))


@dataclass(frozen=True)
class ModelConfig(DictConfig):
    """Architecture, data statistics and initialisation scheme of one transformer.

    Sizes are counts (tokens, hidden units); probabilities are in [0, 1). Fields:

    * ``arch``: ``"decoder"`` (causal LM), ``"encoder"`` (bidirectional, masked LM),
      ``"encoder-decoder"`` (encoder plus causal decoder with cross-attention) or ``"vit"``
      (bidirectional encoder over image patches, classification head).
    * ``n_layers``: transformer layers per stack (the decoder of an encoder-decoder has
      ``n_decoder_layers`` if given, else ``n_layers``).
    * ``d_model``, ``n_heads`` (``d_model % n_heads == 0``), ``d_ff`` (default ``4 * d_model``).
    * ``seq_len``: tokens per sequence L (for ``vit``: derived from the image and patch sizes).
    * ``norm``: ``"pre"`` (x <- lam*x + beta*F(LN(x)), final LayerNorm) or ``"post"``
      (x <- LN(lam*x + beta*F(x)), no extra final LayerNorm).
    * ``dropout``: on the embedding output and on each block output, before the residual merge;
      ``attn_dropout``: on the attention probabilities. ``emb_dropout`` overrides the embedding
      rate (default: ``dropout``).
    * ``scheme``: initialisation/residual-scaling scheme name (see `deepscalelm.theory.schemes`);
      scheme options: ``k`` and ``alpha`` (DSLM: beta^2 = k / N^alpha), ``depth_unit`` (what N counts:
      ``"blocks"``, the residual blocks of the stack, or ``"layers"``), ``r0`` (token correlation of the summed
      embedding before dropout; computed from the embedding set-up when None), ``corr_schedule``
      (DSLM V/O schedule: ``"exact"`` finite-L moments or the authors' large-L ``"paper"`` recursion),
      ``std`` (normal/gpt2 weight std).
    * ``norm_type``: ``"layernorm"`` (mean and variance normalised, gain and bias) or ``"rmsnorm"``
      (x / rms(x), gain only), used for every norm of the model.
    * ``activation``: the feed-forward non-linearity: ``"relu"``, ``"gelu"``, ``"silu"`` (two-matrix MLP
      W2 act(W1 x)) or the gated ``"swiglu"`` / ``"geglu"`` (W2 (act(W1 x) * W3 x), W1 the gate, W3 the up
      projection, hidden width ``d_ff``).
    * ``position``: ``"learned"`` (an added position embedding), ``"rope"`` (rotary positions on q and k,
      base ``rope_base``; needs an even head dimension) or ``"none"``.
    * ``n_kv_heads``: key/value heads for grouped-query attention (None: ``n_heads``; must divide
      ``n_heads``). ``qk_norm``: None, ``"rmsnorm"`` or ``"layernorm"``, a per-head norm of q and k
      before the logits.
    * ``same_token_prob``: probability that two different positions of one sequence hold the same
      token (a data statistic; sum_i p_i^2 for i.i.d. tokens). None: Zipf estimate
      zeta(2) / (ln V + gamma)^2 from ``vocab_size``.
    """

    arch: str = "decoder"
    n_layers: int = 12
    d_model: int = 128
    n_heads: int = 4
    d_ff: int | None = None
    seq_len: int = 128
    vocab_size: int = 256
    norm: str = "pre"
    activation: str = "relu"
    dropout: float = 0.1
    attn_dropout: float = 0.1
    emb_dropout: float | None = None
    scheme: str = "dslm"
    k: float = 2.0
    alpha: float = 1.0
    depth_unit: str = "blocks"
    r0: float | None = None
    corr_schedule: str = "exact"
    std: float = 0.02
    same_token_prob: float | None = None
    n_decoder_layers: int | None = None
    n_token_types: int = 0
    tie_embeddings: bool = True
    bias: bool = True
    ln_eps: float = 1e-5
    norm_type: str = "layernorm"
    position: str = "learned"
    rope_base: float = 10000.0
    n_kv_heads: int | None = None
    qk_norm: str | None = None
    image_size: int = 28
    patch_size: int = 4
    channels: int = 1
    n_classes: int = 10

    def __post_init__(self) -> None:
        _check_choice("arch", self.arch, ARCHS)
        _check_choice("norm", self.norm, NORMS)
        _check_choice("activation", self.activation, ACTIVATIONS)
        _check_choice("scheme", self.scheme, SCHEMES)
        _check_choice("depth_unit", self.depth_unit, DEPTH_UNITS)
        _check_choice("corr_schedule", self.corr_schedule, ("exact", "paper"))
        _check_choice("norm_type", self.norm_type, NORM_TYPES)
        _check_choice("position", self.position, POSITIONS)
        if self.qk_norm not in QK_NORMS:
            raise ValueError(f"qk_norm must be one of None, 'rmsnorm', 'layernorm', got {self.qk_norm!r}")
        _check_range("rope_base", self.rope_base, 1.0, math.inf, lo_open=True, hi_open=True)
        _check_int("n_layers", self.n_layers, 1)
        _check_int("d_model", self.d_model, 1)
        _check_int("n_heads", self.n_heads, 1)
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model must be divisible by n_heads, got d_model={self.d_model}, n_heads={self.n_heads}")
        if self.n_kv_heads is not None:
            _check_int("n_kv_heads", self.n_kv_heads, 1)
            if self.n_heads % self.n_kv_heads:
                raise ValueError(f"n_kv_heads must divide n_heads, got n_heads={self.n_heads}, "
                                 f"n_kv_heads={self.n_kv_heads}")
        if self.position == "rope" and self.d_head % 2:
            raise ValueError(f"position 'rope' needs an even head dimension d_model / n_heads, got "
                             f"{self.d_head} (d_model={self.d_model}, n_heads={self.n_heads})")
        if self.d_ff is not None:
            _check_int("d_ff", self.d_ff, 1)
        if self.n_decoder_layers is not None:
            _check_int("n_decoder_layers", self.n_decoder_layers, 1)
        _check_int("vocab_size", self.vocab_size, 2)
        _check_int("n_token_types", self.n_token_types, 0)
        _check_range("dropout", self.dropout, 0.0, 1.0, hi_open=True)
        _check_range("attn_dropout", self.attn_dropout, 0.0, 1.0, hi_open=True)
        if self.emb_dropout is not None:
            _check_range("emb_dropout", self.emb_dropout, 0.0, 1.0, hi_open=True)
        _check_range("k", self.k, 0.0, math.inf, lo_open=True, hi_open=True)
        _check_range("alpha", self.alpha, 0.0, math.inf, hi_open=True)
        _check_range("std", self.std, 0.0, math.inf, lo_open=True, hi_open=True)
        _check_range("ln_eps", self.ln_eps, 0.0, 1.0, lo_open=True)
        if self.r0 is not None:
            _check_range("r0", self.r0, 0.0, 1.0, lo_open=True)
        if self.same_token_prob is not None:
            _check_range("same_token_prob", self.same_token_prob, 0.0, 1.0)
        if self.scheme == "deepnet" and self.norm != "post":
            raise ValueError("scheme 'deepnet' (DeepNorm) is defined for Post-LN only: use norm='post' "
                             f"or another scheme, got norm={self.norm!r}")
        if self.arch == "vit":
            _check_int("image_size", self.image_size, 1)
            _check_int("patch_size", self.patch_size, 1, self.image_size)
            if self.image_size % self.patch_size:
                raise ValueError(f"image_size must be divisible by patch_size, got "
                                 f"image_size={self.image_size}, patch_size={self.patch_size}")
            _check_int("channels", self.channels, 1)
            _check_int("n_classes", self.n_classes, 2)
            # one class token plus the patches
            object.__setattr__(self, "seq_len", (self.image_size // self.patch_size) ** 2 + 1)
        _check_int("seq_len", self.seq_len, 2 if self.arch != "decoder" else 1)

    # ----------------------------------------------------------------------------------- derived
    @property
    def ffn_dim(self) -> int:
        """Hidden width of the feed-forward block (``d_ff`` or ``4 * d_model``)."""
        return self.d_ff if self.d_ff is not None else 4 * self.d_model

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        """Key/value heads (``n_kv_heads`` or ``n_heads``)."""
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def gated(self) -> bool:
        """Whether the feed-forward block is gated (SwiGLU/GeGLU: three matrices)."""
        return self.activation in GATED_ACTIVATIONS

    @property
    def emb_p(self) -> float:
        """Dropout rate applied to the embedding output."""
        return self.dropout if self.emb_dropout is None else self.emb_dropout

    @property
    def decoder_layers(self) -> int:
        return self.n_decoder_layers if self.n_decoder_layers is not None else self.n_layers

    @property
    def token_repeat_prob(self) -> float:
        """P(two different positions hold the same token): ``same_token_prob`` or the Zipf estimate.

        Zipf estimate (the paper's Zipf embedding correlation, with the Euler-Mascheroni constant as the reviewer
        suggests):
        zeta(2) / (ln V + gamma)^2, clipped to [0, 1].
        """
        if self.same_token_prob is not None:
            return self.same_token_prob
        return min(1.0, (math.pi ** 2 / 6) / (math.log(self.vocab_size) + 0.5772156649) ** 2)

    def stacks(self) -> list[tuple[str, int, bool]]:
        """The residual stacks as (prefix, n_layers, causal): prefix "" for single-stack models."""
        if self.arch == "encoder-decoder":
            return [("encoder.", self.n_layers, False), ("decoder.", self.decoder_layers, True)]
        return [("", self.n_layers, self.arch == "decoder")]

    @classmethod
    def from_hf(cls, hf_config: Any, **overrides: Any) -> ModelConfig:
        """The config of a Hugging Face GPT-2, BERT, RoBERTa or Llama-family model (Llama, Mistral,
        Qwen2, Qwen3; ``PretrainedConfig`` or config.json dict).

        The scheme is the family's Hugging Face default init; ``overrides`` replace fields (e.g.
        ``scheme="dslm"``). Other families raise ValueError. Llama-family configs use RoPE (and GQA,
        QK-norm), which `deepscalelm.predict` does not cover yet; `deepscalelm.apply` does. See
        `deepscalelm.hf_config`.
        """
        from .hf_config import config_from_hf

        return config_from_hf(hf_config, **overrides)

def config_fields() -> list[dataclasses.Field]:
    """The dataclass fields of ModelConfig (used by the CLI to make one flag per field)."""
    return list(dataclasses.fields(ModelConfig))


__all__ = ["ModelConfig", "DictConfig", "ARCHS", "NORMS", "ACTIVATIONS", "GATED_ACTIVATIONS", "NORM_TYPES",
           "POSITIONS", "QK_NORMS", "SCHEMES", "config_fields"]
