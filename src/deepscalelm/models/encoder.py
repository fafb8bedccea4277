"""Encoder-only masked language model (BERT-style).

Bidirectional layers over token (+ position, + optional token-type) embeddings; the MLM head is
``mlm_dense -> activation -> norm -> * head_scale -> tied embedding`` (or ``head.weight``), the norm of
``ModelConfig.norm_type``; the head's activation is ReLU for ``activation="relu"``, else exact GeLU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .components import model_norm
from .decoder import TokenStack
from .init import SchemeModel


class BERT(TokenStack, SchemeModel):
    """Masked LM: ``model(ids[B, L] long, token_type_ids=None) -> logits[B, L, V]``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, config.n_layers, causal=False, token_types=config.n_token_types)
        d = config.d_model
        self.mlm_dense = nn.Linear(d, d, bias=config.bias)
        self.mlm_act = F.relu if config.activation == "relu" else F.gelu
        self.mlm_ln = model_norm(config)
        self.head = None if config.tie_embeddings else nn.Linear(d, config.vocab_size, bias=False)
        self.head_scale = 1.0

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        h = self.mlm_ln(self.mlm_act(self.mlm_dense(h))) * self.head_scale
        return F.linear(h, self.tok_emb.weight if self.head is None else self.head.weight)

    def forward(self, ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.logits(self.hidden(ids, token_type_ids))

    def loss(self, ids: torch.Tensor, targets: torch.Tensor | None = None,
             token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Mean cross-entropy against ``targets`` (default: reconstruct ``ids``; -100 is ignored)."""
        logits = self(ids, token_type_ids)
        targets = ids if targets is None else targets
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                               ignore_index=-100)


__all__ = ["BERT"]
