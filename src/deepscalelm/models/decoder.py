"""Decoder-only causal language model (GPT-style).

``logits = head_scale * h @ W_out^T`` with ``h`` the final hidden state and ``W_out`` the token
embedding (tied) or ``head.weight`` (untied, no bias).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .blocks import Stack, check_ids
from .init import SchemeModel


class TokenStack(Stack):
    """Token (+ learned position, + optional token-type) embedding, then the residual layers.

    ``pos_emb`` exists only for ``position="learned"``; rotary positions live in the attention
    blocks and ``position="none"`` has no positions at all.
    """

    def __init__(self, config: ModelConfig, n_layers: int, causal: bool, cross: bool = False,
                 token_types: int = 0) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.seq_len, config.d_model) if config.position == "learned" else None
        self.type_emb = nn.Embedding(token_types, config.d_model) if token_types > 0 else None
        self._init_stack(config, n_layers, causal, cross)

    def embed(self, ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Sum of the embedding tables, before dropout: [B, L] ids -> [B, L, d]."""
        check_ids(ids, self.config)
        x = self.tok_emb(ids)
        if self.pos_emb is not None:
            x = x + self.pos_emb.weight[: ids.shape[1]]
        if self.type_emb is not None:
            if token_type_ids is None:
                x = x + self.type_emb.weight[0]
            else:
                check_ids(token_type_ids, self.config, "token_type_ids", vocab=self.type_emb.num_embeddings)
                if token_type_ids.shape != ids.shape:
                    raise ValueError(f"token_type_ids must have the shape of ids {tuple(ids.shape)}, "
                                     f"got {tuple(token_type_ids.shape)}")
                x = x + self.type_emb(token_type_ids)
        elif token_type_ids is not None:
            raise ValueError("token_type_ids given but the model has no token-type embedding "
                             "(set n_token_types > 0 in an encoder config)")
        return x

    def hidden(self, ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
               memory: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden state [B, L, d] (after ln_f for Pre-LN)."""
        return self.run_layers(self.embed(ids, token_type_ids), memory)


class GPT(TokenStack, SchemeModel):
    """Causal LM: ``model(ids[B, L] long) -> logits[B, L, V]``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, config.n_layers, causal=True)
        self.head = None if config.tie_embeddings else nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.head_scale = 1.0

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        w = self.tok_emb.weight if self.head is None else self.head.weight
        return F.linear(h * self.head_scale, w)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.logits(self.hidden(ids))

    def loss(self, ids: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Mean next-token cross-entropy (targets default to ids shifted by one; -100 is ignored)."""
        logits = self(ids)
        if targets is None:
            logits, targets = logits[:, :-1], ids[:, 1:]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                               ignore_index=-100)


__all__ = ["GPT", "TokenStack"]
