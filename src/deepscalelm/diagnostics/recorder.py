"""Hooks that record stream moments, stream-gradient moments and attention-logit statistics.

A `Recorder` attaches forward hooks to the residual-stream modules (their first output tensor
``[B, L, d]``) and to the q/k projections of the attention modules. Attention logits are recomputed
on the side, under ``torch.no_grad`` from detached q and k, so the model's own (fused SDPA)
attention path is untouched. Gradients of the stream are read either from tensor hooks (during the
caller's own backward, `Telemetry`) or handed in by `deepscalelm.diagnostics.check`.
Only the first call of each module is recorded between `attach` and `detach` (activation
checkpointing recomputes, gradient accumulation repeats).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..measure.probe import first_tensor
from .stats import logit_stats, stream_moments
from .targets import AttentionSpec, StreamPoint

__all__ = ["Recorder", "first_tensor"]


class Recorder:
    """Collects per-point forward/gradient moments and per-head attention statistics."""

    def __init__(self, model: nn.Module, points: list[StreamPoint], attention: list[AttentionSpec],
                 grad_hooks: bool, keep_outputs: bool, max_sequences: int | None = None) -> None:
        self.model = model
        self.points = points
        self.attention = attention
        self.grad_hooks = grad_hooks
        self.keep_outputs = keep_outputs
        self.max_sequences = max_sequences
        self.fwd: dict[str, tuple[float, float, float, bool]] = {}
        self.grad: dict[str, tuple[float, float, float, bool]] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self.attn: dict[str, dict[str, list[float]]] = {}
        self._pending: dict[str, dict[str, Any]] = {}
        self._handles: list[Any] = []

    # ------------------------------------------------------------------------------------ hooks
    def _stream_hook(self, name: str) -> Callable:
        def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
            if name in self.fwd:
                return
            t = first_tensor(out)
            if t is None or t.dim() != 3:
                shape = None if t is None else tuple(t.shape)
                raise ValueError(f"stream module {name!r} returned {shape if shape else type(out).__name__}: "
                                 "expected a tensor [batch, tokens, width]; name the residual-stream modules "
                                 "(whole layers or blocks), not sub-layers")
            if t.shape[1] < 2:
                raise ValueError(f"sequence length L={t.shape[1]} at {name!r}: the token-to-token correlation "
                                 "needs at least 2 tokens per sequence; use a longer batch")
            self.fwd[name] = stream_moments(t)
            if self.keep_outputs:
                self.outputs[name] = t
            if self.grad_hooks and t.requires_grad:
                t.register_hook(self._grad_hook(name))
        return hook

    def _grad_hook(self, name: str) -> Callable:
        def hook(g: torch.Tensor) -> None:
            if name not in self.grad:
                self.grad[name] = stream_moments(g)
        return hook

    def record_grad(self, name: str, g: torch.Tensor | None) -> None:
        """Store the moments of d(loss)/d(stream) at point ``name`` (None: no gradient reached it)."""
        if g is None:
            self.grad[name] = (math.nan, math.nan, math.nan, True)
        else:
            self.grad[name] = stream_moments(g)

    def _proj_hook(self, spec: AttentionSpec, part: str) -> Callable:
        def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
            if spec.name in self.attn:
                return
            t = first_tensor(out)
            if t is None:
                return
            slot = self._pending.setdefault(spec.name, {})
            if part == "fused":
                d = t.shape[-1] // 3
                slot["q"], slot["k"] = t[..., :d].detach(), t[..., d:2 * d].detach()
            else:
                slot[part] = (t.flatten(2) if t.dim() == 4 else t).detach()  # q/k norm: [B, L, heads, dh]
            self._maybe_finish(spec)
        return hook

    def _rotary_hook(self, spec: AttentionSpec) -> Callable:
        def hook(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            pe = kwargs.get("position_embeddings")
            if pe is None and len(args) > 1:
                pe = args[1]
            if pe is not None:
                self._pending.setdefault(spec.name, {})["rotary"] = (pe[0].detach(), pe[1].detach())
        return hook

    def _maybe_finish(self, spec: AttentionSpec) -> None:
        slot = self._pending.get(spec.name, {})
        if "q" not in slot or "k" not in slot or (spec.rotary and "rotary" not in slot):
            return
        self.attn[spec.name] = logit_stats(slot["q"], slot["k"], spec.n_heads, spec.n_kv_heads, spec.causal,
                                           spec.scale, slot.get("rotary"), self.max_sequences)
        del self._pending[spec.name]

    # ------------------------------------------------------------------------------- lifecycle
    def attach(self) -> None:
        mods = dict(self.model.named_modules())
        for p in self.points:
            self._handles.append(mods[p.name].register_forward_hook(self._stream_hook(p.name)))
        for a in self.attention:
            if a.unsupported is not None:
                continue  # reported as a warning (see `unsupported_attention`), never a wrong number
            if a.fused is not None:
                self._handles.append(mods[a.fused].register_forward_hook(self._proj_hook(a, "fused")))
            else:
                q, k = (a.q_norm, a.k_norm) if a.q_norm is not None and a.k_norm is not None else (a.q, a.k)
                self._handles.append(mods[q].register_forward_hook(self._proj_hook(a, "q")))
                self._handles.append(mods[k].register_forward_hook(self._proj_hook(a, "k")))
            if a.rotary:
                self._handles.append(mods[a.name].register_forward_pre_hook(self._rotary_hook(a), with_kwargs=True))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._pending.clear()

    def reset(self) -> None:
        self.fwd.clear()
        self.grad.clear()
        self.outputs.clear()
        self.attn.clear()
        self._pending.clear()
