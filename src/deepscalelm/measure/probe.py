"""`measure`: per-sublayer forward and backward moments of a model, as a `Trajectory`.

Forward hooks on each stack's embedding dropout, on every residual block (whose output is the stream
after its merge) and on ``ln_f`` capture the residual stream; tensor hooks on those outputs capture
d(loss)/d(stream); hooks on each block's ``drop`` capture the block output F (after its dropout,
before ``beta``). Records follow `deepscalelm.records` with the keys of `deepscalelm.predict`.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from ..records import Record, Trajectory
from .stats import moments

PROTOCOLS = ("paper", "loss")
_RECORD_BLOCK = {"attn": "attn", "cross": "cross_attn", "ffn": "ffn"}


def _points(model: nn.Module) -> list[tuple[tuple[str, int, str], nn.Module, nn.Module | None]]:
    """(record key, stream module, block-output module or None) for every measured point, in order."""
    points = []
    for stack_name, stack in model.stacks():
        n = len(stack.layers)
        points.append(((stack_name, 0, "embedding"), stack.drop_emb, None))
        for i, layer in enumerate(stack.layers):
            for attr in ("attn", "cross", "ffn"):
                block = getattr(layer, attr, None)
                if block is not None:
                    points.append(((stack_name, i + 1, _RECORD_BLOCK[attr]), block, block.drop))
        if stack.ln_f is not None:
            points.append(((stack_name, n, "final_norm"), stack.ln_f, None))
    return points


def _as_args(batch: Any) -> tuple:
    if isinstance(batch, torch.Tensor):
        return (batch,)
    if isinstance(batch, (tuple, list)) and all(isinstance(b, torch.Tensor) for b in batch):
        return tuple(batch)
    raise ValueError("batch must be a tensor (token ids [B, L] or images [B, C, H, W]) or a tuple of tensors "
                     f"(src_ids, tgt_ids) for an encoder-decoder, got {type(batch).__name__}")


def measure(model: nn.Module, batch: Any, protocol: str = "paper", targets: torch.Tensor | None = None,
            seed: int = 0) -> Trajectory:
    """Measure the moments of ``model`` on ``batch`` (one forward and one backward pass).

    * ``protocol="paper"``: backpropagate ``loss = sum(h_final * G)`` with ``G`` iid N(0, 1) (drawn
      from a generator seeded with ``seed``) and ``h_final`` the final hidden state (after ``ln_f``
      for Pre-LN, after the last merge's LayerNorm for Post-LN), as `deepscalelm.predict` assumes.
    * ``protocol="loss"``: backpropagate the model's own mean cross-entropy ``model.loss(*batch,
      targets=targets)`` (LMs: next-token / reconstruction targets by default; ViT: labels required).

    The model's train/eval mode is kept (dropout is active in train mode); no ``.grad`` of any
    parameter is touched (gradients are taken only with respect to the embedding outputs).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if not hasattr(model, "stacks") or not hasattr(model, "hidden"):
        raise ValueError(f"measure needs a deepscalelm model (build_model), got {type(model).__name__}")
    args = _as_args(batch)
    points = _points(model)
    fwd: dict[tuple, tuple[float, float, float]] = {}
    bwd: dict[tuple, tuple[float, float, float]] = {}
    blk: dict[tuple, tuple[float, float, float]] = {}
    roots: list[torch.Tensor] = []

    def stream_hook(key: tuple, is_root: bool) -> Callable:
        def hook(_module: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            if key in fwd:  # recomputation (activation checkpointing) or a second call
                return
            fwd[key] = moments(out)
            if out.requires_grad:
                out.register_hook(lambda g: bwd.setdefault(key, moments(g)) and None)
                if is_root:
                    roots.append(out)
        return hook

    def block_hook(key: tuple) -> Callable:
        def hook(_module: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            blk.setdefault(key, moments(out))
        return hook

    handles = []
    for key, stream_mod, block_mod in points:
        handles.append(stream_mod.register_forward_hook(stream_hook(key, key[2] == "embedding")))
        if block_mod is not None:
            handles.append(block_mod.register_forward_hook(block_hook(key)))
    try:
        with torch.enable_grad():
            if protocol == "paper":
                h = model.hidden(*args)
                gen = torch.Generator(device=h.device).manual_seed(seed)
                g = torch.randn(h.shape, generator=gen, device=h.device, dtype=h.dtype)
                loss = (h * g).sum()
            else:
                loss = model.loss(*args, targets=targets)
            if not roots:
                raise ValueError("no gradient reaches the embedding output: are the parameters frozen?")
            torch.autograd.grad(loss, roots, allow_unused=True)
    finally:
        for hd in handles:
            hd.remove()

    nan = (math.nan, math.nan, math.nan)
    records = []
    for key, _stream, block_mod in points:
        mean, var, corr = fwd[key]
        _gm, gvar, gcorr = bwd.get(key, nan)
        bvar = bcorr = None
        if block_mod is not None:
            _bm, bvar, bcorr = blk[key]
        records.append(Record(key[0], key[1], key[2], mean, var, corr, gvar, gcorr, bvar, bcorr))
    shape = [tuple(a.shape) for a in args]
    meta = {"config": model.config.to_dict(), "scheme": model.scheme.name, "protocol": protocol,
            "batch_shape": shape, "training": model.training, "seed": seed}
    return Trajectory(records, source="measured", meta=meta)


__all__ = ["measure", "PROTOCOLS"]
