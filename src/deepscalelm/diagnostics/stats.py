"""Moment statistics used by the diagnostics, with the definitions of the paper's component-check protocol.

All functions take detached activations or gradients and compute in float64; the stream moments
are `deepscalelm.measure.stats.token_moments`, shared with `deepscalelm.measure`. Shapes:

* stream tensors ``x[B, L, d]`` (batch, tokens, hidden units);
* attention logits ``s[B, H, L, S]`` (batch, heads, query tokens, key tokens).
"""

from __future__ import annotations

import math

import torch

from ..measure.stats import token_moments

__all__ = ["stream_moments", "logit_stats", "rotate_half", "apply_rotary"]


def stream_moments(x: torch.Tensor) -> tuple[float, float, float, bool]:
    """(mean, var, corr, finite) of a residual-stream tensor ``x[B, L, d]``: the one statistic
    `deepscalelm.measure.stats.token_moments` (float64; corr NaN when L < 2, var <= 0 or the tensor
    holds NaN/inf; ``finite`` says whether every entry is finite)."""
    m = token_moments(x)
    return m.mean, m.var, m.corr, m.finite


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the last axis split in two halves (rotary embeddings, half layout)."""
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of ``x[B, H, L, dh]`` with ``cos``/``sin`` of shape [B, L, dh] or [L, dh]."""
    if cos.dim() == 2:
        cos, sin = cos[None], sin[None]
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


@torch.no_grad()
def logit_stats(q: torch.Tensor, k: torch.Tensor, n_heads: int, n_kv_heads: int, causal: bool,
                scale: float | None = None, rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
                max_sequences: int | None = None) -> dict[str, list[float]]:
    """Per-head attention-logit statistics recomputed from projected queries and keys.

    ``q[B, L, n_heads*dh]`` and ``k[B, S, n_kv_heads*dh]`` are the outputs of the q/k projections
    (heads contiguous on the last axis). Logits ``s = q_h k_h^T * scale`` (default 1/sqrt(dh));
    with ``causal`` (and L == S) key j > query i is masked. ``rotary`` = (cos, sin) applies rotary
    embeddings first (Llama). Grouped keys are repeated to the query heads.

    Returns lists indexed by head: ``logit_max`` (largest unmasked logit), ``logit_var`` (variance
    of the logits of one query over its visible keys, averaged over queries with >= 2 keys and over
    sequences; the row mean is removed because softmax ignores it), ``entropy`` (mean over queries of the
    softmax entropy, nats) and ``entropy_norm`` (mean over queries with >= 2 keys of entropy divided
    by ln(number of visible keys); 1 = uniform attention, 0 = one-hot). Computed one sequence at a
    time (memory H*L*S floats), on at most ``max_sequences`` sequences.
    """
    if q.dim() != 3 or k.dim() != 3:
        raise ValueError(f"q and k must be [batch, tokens, heads*head_dim], got {tuple(q.shape)}, {tuple(k.shape)}")
    B, L, dq = q.shape
    S = k.shape[1]
    if dq % n_heads or k.shape[2] % n_kv_heads or n_heads % n_kv_heads:
        raise ValueError(f"cannot split q width {dq} into {n_heads} heads and k width {k.shape[2]} into "
                         f"{n_kv_heads} key heads")
    dh = dq // n_heads
    if k.shape[2] // n_kv_heads != dh:
        raise ValueError(f"q head size {dh} differs from k head size {k.shape[2] // n_kv_heads}")
    scale = dh ** -0.5 if scale is None else scale
    nb = B if max_sequences is None else max(1, min(B, max_sequences))
    mask = None
    if causal and L == S:
        mask = torch.ones(L, S, dtype=torch.bool, device=q.device).tril()
    keys_per_row = (mask.sum(-1).to(torch.float64) if mask is not None
                    else torch.full((L,), float(S), dtype=torch.float64, device=q.device))
    multi = keys_per_row > 1
    var_sum = torch.zeros(n_heads, dtype=torch.float64, device=q.device)
    mx = torch.full_like(var_sum, -math.inf)
    ent = torch.zeros_like(var_sum)
    ent_n = torch.zeros_like(var_sum)
    for b in range(nb):
        qb = q[b].reshape(L, n_heads, dh).transpose(0, 1).to(torch.float32)  # [H, L, dh]
        kb = k[b].reshape(S, n_kv_heads, dh).transpose(0, 1).to(torch.float32)
        if rotary is not None:
            cos, sin = rotary
            cb = cos[min(b, cos.shape[0] - 1)] if cos.dim() == 3 else cos  # [L, dh]
            sb = sin[min(b, sin.shape[0] - 1)] if sin.dim() == 3 else sin
            qb = apply_rotary(qb[None], cb[:L].float(), sb[:L].float())[0]
            kb = apply_rotary(kb[None], cb[:S].float(), sb[:S].float())[0]
        if n_kv_heads != n_heads:
            kb = kb.repeat_interleave(n_heads // n_kv_heads, dim=0)
        s = (qb @ kb.transpose(-1, -2)) * scale  # [H, L, S]
        s64 = s.to(torch.float64)
        if mask is not None:
            mx = torch.maximum(mx, s64.masked_fill(~mask, -math.inf).amax(dim=(1, 2)))
            sv = s64.masked_fill(~mask, 0.0)
            s = s.masked_fill(~mask, -math.inf)
        else:
            mx = torch.maximum(mx, s64.amax(dim=(1, 2)))
            sv = s64
        row_mean = sv.sum(-1) / keys_per_row  # [H, L]
        row_var = (sv * sv).sum(-1) / keys_per_row - row_mean ** 2
        var_sum += row_var[:, multi].clamp_min(0.0).mean(-1)
        logp = torch.log_softmax(s, dim=-1)
        p = logp.exp()
        row_ent = -(p * logp.nan_to_num(neginf=0.0)).sum(-1).to(torch.float64)  # [H, L]
        ent += row_ent.mean(-1)
        if bool(multi.any()):
            ent_n += (row_ent[:, multi] / keys_per_row[multi].log()).mean(-1)
    var = var_sum / nb if bool(multi.any()) else torch.full_like(var_sum, math.nan)
    return {"logit_max": mx.tolist(), "logit_var": var.tolist(),
            "entropy": (ent / nb).tolist(), "entropy_norm": (ent_n / nb).tolist()}
