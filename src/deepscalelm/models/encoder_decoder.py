"""Encoder-decoder (T5/original-Transformer style): bidirectional encoder, causal decoder with
cross-attention to the encoder's final hidden state; LM head tied to the decoder token embedding
(or the top-level ``head.weight``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .decoder import TokenStack
from .init import SchemeModel


class EncoderDecoder(SchemeModel):
    """``model(src_ids[B, S] long, tgt_ids[B, T] long) -> logits[B, T, V]``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = TokenStack(config, config.n_layers, causal=False)
        self.decoder = TokenStack(config, config.decoder_layers, causal=True, cross=True)
        self.head = None if config.tie_embeddings else nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.head_scale = 1.0

    def stacks(self) -> list[tuple[str, nn.Module]]:
        return [("encoder", self.encoder), ("decoder", self.decoder)]

    def hidden(self, src_ids: torch.Tensor, tgt_ids: torch.Tensor) -> torch.Tensor:
        """Final decoder hidden state [B, T, d]."""
        memory = self.encoder.hidden(src_ids)
        if tgt_ids.shape[0] != src_ids.shape[0]:
            raise ValueError(f"src_ids and tgt_ids must share the batch size, got {tuple(src_ids.shape)} "
                             f"and {tuple(tgt_ids.shape)}")
        return self.decoder.hidden(tgt_ids, memory=memory)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        w = self.decoder.tok_emb.weight if self.head is None else self.head.weight
        return F.linear(h * self.head_scale, w)

    def forward(self, src_ids: torch.Tensor, tgt_ids: torch.Tensor) -> torch.Tensor:
        return self.logits(self.hidden(src_ids, tgt_ids))

    def loss(self, src_ids: torch.Tensor, tgt_ids: torch.Tensor,
             targets: torch.Tensor | None = None) -> torch.Tensor:
        """Mean next-token cross-entropy on the target (default: tgt_ids shifted by one)."""
        logits = self(src_ids, tgt_ids)
        if targets is None:
            logits, targets = logits[:, :-1], tgt_ids[:, 1:]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                               ignore_index=-100)


__all__ = ["EncoderDecoder"]
