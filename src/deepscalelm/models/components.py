"""Pieces of Llama-style blocks: the norm factory, rotary position embedding, per-head q/k transforms.

* `make_norm`: ``nn.LayerNorm`` or ``nn.RMSNorm`` (``ModelConfig.norm_type``); `NORM_MODULES` is the
  tuple of norm classes the models build (init, weight decay and measurement treat them alike).
* `rope_tables` / `apply_rope`: rotary position embedding in the rotate-half layout. For a head vector
  x of even size D split into halves (x1, x2), position m and frequencies
  theta_i = base^(-2i/D), i = 0..D/2-1:
  ``rope(x, m) = x * cos(m theta) + rotate_half(x) * sin(m theta)`` with rotate_half(x) = (-x2, x1),
  i.e. each pair (x1_i, x2_i) is rotated by the angle m theta_i, so
  ``<rope(q, m), rope(k, n)>`` depends on m and n only through m - n.
* `HeadTransform`: what happens to q (or k) between its projection and the logits: the per-head
  norm of ``qk_norm`` (over d_head), then rotary positions. Its output is the projected
  ``[B, L, heads * d_head]`` tensor that enters the attention product, so measurement hooks on it see
  exactly the queries/keys of the logits.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from ..config import ModelConfig

#: the normalisation modules the models build (every one starts at gain 1, shift 0)
NORM_MODULES: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.RMSNorm)


def make_norm(kind: str, dim: int, eps: float) -> nn.Module:
    """``nn.LayerNorm(dim)`` for ``"layernorm"``, ``nn.RMSNorm(dim)`` (x / sqrt(mean(x^2) + eps), gain
    only) for ``"rmsnorm"``; ``eps`` is added to the variance (LayerNorm) or mean square (RMSNorm)."""
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps)
    if kind == "rmsnorm":
        return nn.RMSNorm(dim, eps=eps)
    raise ValueError(f"norm type must be one of 'layernorm', 'rmsnorm', got {kind!r}")


def model_norm(config: ModelConfig) -> nn.Module:
    """The block / final norm of ``config`` over d_model (``config.norm_type``, eps ``config.ln_eps``)."""
    return make_norm(config.norm_type, config.d_model, config.ln_eps)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the last axis split into two halves."""
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rope_tables(n_pos: int, d_head: int, base: float, device: torch.device | None = None,
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each ``[n_pos, d_head]``, of the angles m * theta_i for positions m = 0..n_pos-1.

    theta_i = base^(-2i / d_head) (radians per position), each repeated for both halves of the head.
    Angles are computed in float32 and then cast to ``dtype``. ``d_head`` must be even.
    """
    if d_head % 2:
        raise ValueError(f"rotary positions need an even head dimension, got d_head={d_head}")
    inv_freq = 1.0 / (base ** (torch.arange(0, d_head, 2, device=device, dtype=torch.float32) / d_head))
    angles = torch.arange(n_pos, device=device, dtype=torch.float32)[:, None] * inv_freq[None, :]
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x[..., L, H, d_head]`` by the tables ``cos``/``sin`` of shape ``[L, d_head]``."""
    return x * cos[:, None, :] + rotate_half(x) * sin[:, None, :]


class HeadTransform(nn.Module):
    """Per-head norm (``norm``: None, ``"rmsnorm"``, ``"layernorm"``, over d_head) then rotary positions
    (``rope``) of projected queries or keys: ``[B, L, n_heads * d_head] -> [B, L, n_heads * d_head]``.

    Rotary positions are the token indices 0..L-1 of the sequence; the tables are recomputed per call
    (L x d_head values, no buffers, so meta-device construction needs no special handling). The norm
    runs in its parameters' dtype (float32 under autocast) and its output is cast back to the input
    dtype (a no-op when the two agree).
    """

    def __init__(self, n_heads: int, d_head: int, norm: str | None, rope: bool, rope_base: float,
                 eps: float) -> None:
        super().__init__()
        if rope and d_head % 2:
            raise ValueError(f"position 'rope' needs an even head dimension, got d_head={d_head}")
        self.n_heads, self.d_head, self.rope, self.rope_base = n_heads, d_head, rope, rope_base
        self.norm = make_norm(norm, d_head, eps) if norm is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        h = x.view(B, L, self.n_heads, self.d_head)
        if self.norm is not None:  # in the norm's dtype (float32 under autocast), back to the input dtype
            h = self.norm(h.to(cast(torch.Tensor, self.norm.weight).dtype)).to(x.dtype)
        if self.rope:
            cos, sin = rope_tables(L, self.d_head, self.rope_base, device=x.device, dtype=h.dtype)
            h = apply_rope(h, cos, sin)
        return h.reshape(B, L, self.n_heads * self.d_head)

    def extra_repr(self) -> str:
        return f"heads={self.n_heads}, d_head={self.d_head}, rope={self.rope}, rope_base={self.rope_base}"


__all__ = ["NORM_MODULES", "make_norm", "model_norm", "rotate_half", "rope_tables", "apply_rope",
           "HeadTransform"]
