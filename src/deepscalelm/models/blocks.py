"""Building blocks shared by every model family: residual blocks, layers, a token stack.

A residual block owns its norm (LayerNorm or RMSNorm, ``ModelConfig.norm_type``), its sublayer F
(attention, cross-attention or FFN), the dropout on F's output and the merge coefficients ``lam`` /
``beta`` (python floats set by the scheme):

* Pre-LN:  ``x <- lam * x + beta * drop(F(LN(x)))``
* Post-LN: ``x <- LN(lam * x + beta * drop(F(x)))``

so the block's forward returns the residual stream *after* its merge (the hook point of
`deepscalelm.measure`), and ``block.drop`` returns F after dropout, before ``beta``.
Weights are created empty-ish (PyTorch defaults); every value is set by
`deepscalelm.models.init.apply_scheme`, the one place where initialisation happens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import ModelConfig
from .components import HeadTransform, model_norm

#: whether F.scaled_dot_product_attention shares K/V across query groups itself (torch >= 2.5)
_SDPA_GQA = "enable_gqa" in (F.scaled_dot_product_attention.__doc__ or "")


def merge(x: torch.Tensor, f: torch.Tensor, lam: float, beta: float) -> torch.Tensor:
    """``lam * x + beta * f`` with one fused kernel when lam == 1 (plain / baseline schemes)."""
    if lam == 1.0:
        return torch.add(x, f, alpha=beta)
    return x.mul(lam).add_(f, alpha=beta)


class ResidualBlock(nn.Module):
    """Norm + sublayer ``f`` + dropout + scaled merge; subclasses define ``f``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.pre = config.norm == "pre"
        self.ln = model_norm(config)
        self.drop = nn.Dropout(config.dropout)
        self.lam = 1.0  # set by apply_scheme
        self.beta = 1.0

    def f(self, h: torch.Tensor, *context: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, *context: torch.Tensor) -> torch.Tensor:
        if self.pre:
            return merge(x, self.drop(self.f(self.ln(x), *context)), self.lam, self.beta)
        return self.ln(merge(x, self.drop(self.f(x, *context)), self.lam, self.beta))


class Attention(ResidualBlock):
    """Multi-head scaled dot-product attention; with ``memory`` it is cross-attention (keys and
    values from the encoder output, never causal).

    Grouped-query attention: ``k`` and ``v`` project to ``n_kv_heads`` heads; query head h reads
    key/value head ``h // (n_heads / n_kv_heads)`` (contiguous groups, as ``repeat_interleave``).
    ``q_post`` / ``k_post`` (present only with ``qk_norm`` or rotary positions) apply the per-head
    norm and then rotary positions; rotary positions are applied in self-attention only (a
    cross-attention query and its encoder keys do not share a position axis).
    """

    q_post: HeadTransform | None
    k_post: HeadTransform | None

    def __init__(self, config: ModelConfig, causal: bool, cross: bool = False) -> None:
        super().__init__(config)
        d, dh = config.d_model, config.d_head
        self.n_heads, self.n_kv_heads, self.d_head = config.n_heads, config.kv_heads, dh
        self.causal, self.attn_p = causal, config.attn_dropout
        self.q = nn.Linear(d, d, bias=config.bias)
        self.k = nn.Linear(d, self.n_kv_heads * dh, bias=config.bias)
        self.v = nn.Linear(d, self.n_kv_heads * dh, bias=config.bias)
        self.o = nn.Linear(d, d, bias=config.bias)
        rope = config.position == "rope" and not cross
        if config.qk_norm is not None or rope:
            self.q_post = HeadTransform(self.n_heads, dh, config.qk_norm, rope, config.rope_base, config.ln_eps)
            self.k_post = HeadTransform(self.n_kv_heads, dh, config.qk_norm, rope, config.rope_base,
                                        config.ln_eps)
        else:
            self.q_post = self.k_post = None

    def f(self, h: torch.Tensor, memory: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        src = h if memory is None else memory
        B, L, d = h.shape
        S = src.shape[1]
        nh, nkv, dh = self.n_heads, self.n_kv_heads, self.d_head
        q, k = self.q(h), self.k(src)
        if self.q_post is not None and self.k_post is not None:  # both or neither
            q, k = self.q_post(q), self.k_post(k)
        q = q.view(B, L, nh, dh).transpose(1, 2)
        k = k.view(B, S, nkv, dh).transpose(1, 2)
        v = self.v(src).view(B, S, nkv, dh).transpose(1, 2)
        extra: dict[str, Any] = {}
        if nkv != nh:
            if _SDPA_GQA:
                extra["enable_gqa"] = True
            else:
                k, v = k.repeat_interleave(nh // nkv, dim=1), v.repeat_interleave(nh // nkv, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_p if self.training else 0.0,
                                           is_causal=self.causal and memory is None, **extra)
        return self.o(y.transpose(1, 2).reshape(B, L, d))


#: the non-linearity of each ``ModelConfig.activation`` (GeLU exact, erf form)
FFN_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu, "gelu": F.gelu, "silu": F.silu, "swiglu": F.silu, "geglu": F.gelu}


class FeedForward(ResidualBlock):
    """``fc2(act(fc1(h)))`` (relu, gelu, silu) or, gated (swiglu, geglu),
    ``fc2(act(fc1(h)) * fc3(h))``: fc1 = W1 the gate, fc3 = W3 the up projection, fc2 = W2 the down
    projection; act = SiLU for swiglu, exact GeLU for geglu."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.fc1 = nn.Linear(config.d_model, config.ffn_dim, bias=config.bias)
        self.fc3 = nn.Linear(config.d_model, config.ffn_dim, bias=config.bias) if config.gated else None
        self.fc2 = nn.Linear(config.ffn_dim, config.d_model, bias=config.bias)
        self.act = FFN_ACTIVATIONS[config.activation]

    def f(self, h: torch.Tensor) -> torch.Tensor:  # type: ignore[override]  # no context
        a = self.act(self.fc1(h))
        if self.fc3 is not None:
            a = a * self.fc3(h)
        return self.fc2(a)


class Layer(nn.Module):
    """One transformer layer: self-attention, optional cross-attention, FFN."""

    def __init__(self, config: ModelConfig, causal: bool, cross: bool = False) -> None:
        super().__init__()
        self.attn = Attention(config, causal)
        self.cross = Attention(config, causal=False, cross=True) if cross else None
        self.ffn = FeedForward(config)

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None = None) -> torch.Tensor:
        x = self.attn(x)
        if self.cross is not None:
            x = self.cross(x, memory)
        return self.ffn(x)


class Stack(nn.Module):
    """Embedding dropout, layers and (Pre-LN) final norm of one residual stack.

    Subclasses provide ``embed(...) -> x[B, L, d]`` (before dropout). ``forward`` returns the final
    hidden state: after ``ln_f`` (Pre-LN) or after the last merge's norm (Post-LN).
    """

    def _init_stack(self, config: ModelConfig, n_layers: int, causal: bool, cross: bool = False) -> None:
        self.drop_emb = nn.Dropout(config.emb_p)
        self.layers = nn.ModuleList(Layer(config, causal, cross) for _ in range(n_layers))
        self.ln_f = model_norm(config) if config.norm == "pre" else None
        self.checkpointing = False

    def run_layers(self, x: torch.Tensor, memory: torch.Tensor | None = None) -> torch.Tensor:
        x = self.drop_emb(x)
        ckpt = self.checkpointing and torch.is_grad_enabled()
        for layer in self.layers:
            x = checkpoint(layer, x, memory, use_reentrant=False) if ckpt else layer(x, memory)
        return self.ln_f(x) if self.ln_f is not None else x


def check_ids(ids: torch.Tensor, config: ModelConfig, name: str = "ids", vocab: int | None = None) -> None:
    """Raise ValueError unless ``ids`` is an integer tensor [B, L] with L <= seq_len, 0 <= id < V."""
    vocab = config.vocab_size if vocab is None else vocab
    if not isinstance(ids, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of token ids with shape [batch, length], "
                         f"got {type(ids).__name__}")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor (torch.long) of token ids, got dtype {ids.dtype}")
    if ids.dim() != 2:
        raise ValueError(f"{name} must have shape [batch, length], got shape {tuple(ids.shape)}")
    if ids.shape[1] > config.seq_len or ids.shape[1] < 1:
        raise ValueError(f"{name} length must be in [1, seq_len={config.seq_len}], got {ids.shape[1]}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise ValueError(f"{name} must lie in [0, {vocab - 1}], got values in "
                         f"[{int(ids.min())}, {int(ids.max())}]")


__all__ = ["merge", "ResidualBlock", "Attention", "FeedForward", "FFN_ACTIVATIONS", "Layer", "Stack", "check_ids"]
