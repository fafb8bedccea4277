"""Vision Transformer classifier: patch embedding + class token + learned positions, the
bidirectional encoder, classification from the class token's final hidden state.

With ``position="rope"`` the learned table is replaced by rotary positions over the flattened
sequence index (class token 0, patches 1.. in row-major order); ``"none"`` has no positions.

Images are ``[B, C, H, W]`` floats; the DSLM patch-embedding variance assumes unit-variance pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .blocks import Stack
from .init import SchemeModel


class ViT(Stack, SchemeModel):
    """``model(images[B, C, H, W] float) -> logits[B, n_classes]``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        d, P = config.d_model, config.patch_size
        self.patch_emb = nn.Linear(config.channels * P * P, d, bias=config.bias)
        self.cls_token = nn.Parameter(torch.empty(1, d))
        self.pos_emb = nn.Embedding(config.seq_len, d) if config.position == "learned" else None
        self._init_stack(config, config.n_layers, causal=False)
        self.head = nn.Linear(d, config.n_classes, bias=config.bias)
        self.head_scale = 1.0

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> class token + patch embeddings + positions, [B, 1 + n_patches, d]."""
        c = self.config
        want = (c.channels, c.image_size, c.image_size)
        if not isinstance(images, torch.Tensor) or not images.is_floating_point():
            raise ValueError(f"images must be a floating-point tensor [batch, {c.channels}, {c.image_size}, "
                             f"{c.image_size}], got {getattr(images, 'dtype', type(images).__name__)}")
        if images.dim() != 4 or tuple(images.shape[1:]) != want:
            raise ValueError(f"images must have shape [batch, {want[0]}, {want[1]}, {want[2]}], "
                             f"got {tuple(images.shape)}")
        B, P, n = images.shape[0], c.patch_size, c.image_size // c.patch_size
        patches = images.reshape(B, c.channels, n, P, n, P).permute(0, 2, 4, 1, 3, 5).reshape(B, n * n, -1)
        x = self.patch_emb(patches.to(self.patch_emb.weight.dtype))
        x = torch.cat([self.cls_token.expand(B, 1, -1).to(x.dtype), x], dim=1)
        return x if self.pos_emb is None else x + self.pos_emb.weight

    def hidden(self, images: torch.Tensor) -> torch.Tensor:
        """Final hidden state of every position [B, 1 + n_patches, d]."""
        return self.run_layers(self.embed(images))

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(h[:, 0] * self.head_scale)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(self.hidden(images))

    def loss(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the class logits against integer labels [B]."""
        return F.cross_entropy(self(images).float(), targets)


__all__ = ["ViT"]
