"""A pretrained byte-level backbone (BERT-style encoder or GPT-style decoder) with a task head.

``FinetuneModel(backbone, n_out, kind)`` maps ``ids[B, K, L]`` (K rows per example: 1 for
classification, one per option for multiple choice) and ``lengths[B, K]`` to logits:

* classification: ``[B, n_labels]`` from a linear head ``d -> n_labels`` on the pooled vector;
* multiple choice: ``[B, K]``, each option's row scored by a linear head ``d -> 1`` (softmax over
  the options in the loss).

Pooling: encoder — the final hidden state at position 0 (the BOS byte, BERT's ``[CLS]``); decoder —
the final hidden state of the last real token (``lengths - 1``), the only causal position that sees the
whole input. The backbone is used as built by its scheme, so the DSLM residual scaling (``lam``,
``beta`` of every block) and initialisation-derived structure stay in force; its LM head is unused.

Head initialisation (DSLM rule for a layer that reads a unit-variance input: variance 1/fan_in, so
its output has unit variance): weights ~ N(0, 1 / (d * q)), bias 0, where q is the mean square of the
pooled vector measured on a calibration batch of training inputs (`init_head`). For a backbone whose
final LayerNorm is untouched q = 1 and this is exactly 1/fan_in; after pretraining the LayerNorm gain
and shift move q away from 1, and dividing by q keeps the head's output at unit variance. No dropout
is applied to the pooled vector (dropout would change its variance between training and evaluation);
the backbone keeps its own dropout.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

if TYPE_CHECKING:
    from ..config import ModelConfig

KIND_OUT = ("classification", "multiple_choice")


class FinetuneModel(nn.Module):
    """Backbone + pooling + linear head (see module docstring). Parameters: ``backbone.*``, ``head.*``."""

    def __init__(self, backbone: nn.Module, n_labels: int, kind: str) -> None:
        super().__init__()
        if kind not in KIND_OUT:
            raise ValueError(f"kind must be one of {KIND_OUT}, got {kind!r}")
        config = cast("ModelConfig", backbone.config)
        arch = config.arch
        if arch not in ("encoder", "decoder"):
            raise ValueError(f"fine-tuning needs an encoder or decoder backbone, got arch {arch!r}")
        if not isinstance(n_labels, int) or n_labels < 2:
            raise ValueError(f"n_labels must be an integer >= 2, got {n_labels!r}")
        self.backbone = backbone
        self.kind = kind
        self.n_labels = n_labels
        self.causal = arch == "decoder"
        self.head = nn.Linear(config.d_model, 1 if kind == "multiple_choice" else n_labels)
        self.head_q = 1.0  # mean square of the pooled vector used at initialisation

    @property
    def config(self):  # noqa: ANN201 - the backbone's ModelConfig
        return self.backbone.config

    def pooled(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Pooled vectors [B, K, d] of ``ids[B, K, L]``."""
        if ids.dim() != 3 or lengths.shape != ids.shape[:2]:
            raise ValueError(f"ids must be [batch, rows, length] and lengths [batch, rows], got "
                             f"{tuple(ids.shape)} and {tuple(lengths.shape)}")
        B, K, L = ids.shape
        if int(lengths.min()) < 1 or int(lengths.max()) > L:
            raise ValueError(f"lengths must lie in [1, {L}]")
        backbone: Any = self.backbone  # a deepscalelm encoder or decoder
        h = backbone.hidden(ids.reshape(B * K, L))  # [B*K, L, d]
        if self.causal:
            idx = (lengths.reshape(B * K) - 1).to(h.device)
            pooled = h[torch.arange(B * K, device=h.device), idx]
        else:
            pooled = h[:, 0]
        return pooled.reshape(B, K, -1)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits [B, n_labels] (classification) or [B, K] (multiple choice)."""
        z = self.head(self.pooled(ids, lengths))  # [B, K, out]
        if self.kind == "multiple_choice":
            return z[..., 0]
        return z[:, 0]

    @torch.no_grad()
    def init_head(self, ids: torch.Tensor, lengths: torch.Tensor) -> float:
        """Initialise the head for unit output variance on this calibration batch; returns q.

        Draws from the global torch RNG (seed it for reproducibility). The backbone is put in eval
        mode for the measurement and returned to its previous mode.
        """
        was = self.training
        self.eval()
        q = float(self.pooled(ids, lengths).float().pow(2).mean())
        self.train(was)
        if not math.isfinite(q) or q <= 0:
            raise ValueError(f"pooled vectors have mean square {q}: the backbone output is degenerate")
        d = self.head.in_features
        self.head.weight.normal_(0.0, math.sqrt(1.0 / (d * q)))
        self.head.bias.zero_()
        self.head_q = q
        return q


__all__ = ["FinetuneModel"]
