"""`measure`: per-sublayer forward and backward moments of a model, as a `Trajectory`.

Where the stream is read comes from the structure registry (`deepscalelm.structure`, its
`Resolved.sites`): for deepscalelm models the embedding dropout, every residual block (whose output
is the stream after its merge, block output F read at its ``drop``, after dropout, before ``beta``)
and ``ln_f``; for a registered foreign model (Hugging Face or ``deepscalelm.register``) every layer
(record block ``"layer"``), the final norm, and ``stream_in`` when the structure names it. Forward
hooks capture the stream, tensor hooks on those outputs capture d(loss)/d(stream). Records follow
`deepscalelm.records` with the keys of `deepscalelm.predict`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..records import Record, Trajectory
from ..structure import Site, stacks_of
from .stats import moments

PROTOCOLS = ("paper", "loss")


def first_tensor(out: Any) -> torch.Tensor | None:
    """The first tensor of a module output (a tensor, a tuple/list, or a dict-like ModelOutput)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        for o in out:
            t = first_tensor(o)
            if t is not None:
                return t
        return None
    if hasattr(out, "values"):
        for o in out.values():
            if isinstance(o, torch.Tensor):
                return o
    return None


def _points(model: nn.Module) -> list[tuple[tuple[str, int, str], nn.Module, nn.Module | None]]:
    """(record key, stream module, block-output module or None) for every measured point, in order,
    from the registry's sites (`deepscalelm.structure.stacks_of`)."""
    mods = dict(model.named_modules())
    sites: list[Site] = [site for res in stacks_of(model) for site in res.sites]
    return [(s.key, mods[s.name], mods[s.branch] if s.branch else None) for s in sites]


def _as_args(batch: Any, own: bool) -> tuple | dict:
    if isinstance(batch, torch.Tensor):
        return (batch,)
    if isinstance(batch, (tuple, list)) and batch and all(isinstance(b, torch.Tensor) for b in batch):
        return tuple(batch)
    if not own and isinstance(batch, dict):
        return dict(batch)
    raise ValueError("batch must be a tensor (token ids [B, L] or images [B, C, H, W]) or a tuple of tensors "
                     f"(src_ids, tgt_ids) for an encoder-decoder{'' if own else ', or a dict of keyword arguments'}"
                     f", got {type(batch).__name__}")


def _is_own(model: nn.Module) -> bool:
    from ..config import ModelConfig

    return hasattr(model, "stacks") and hasattr(model, "hidden") and isinstance(getattr(model, "config", None),
                                                                               ModelConfig)


def _meta(model: nn.Module, own: bool, args: tuple | dict, protocol: str, seed: int) -> dict[str, Any]:
    values = args.values() if isinstance(args, dict) else args
    ours: Any = model  # when own, a deepscalelm model with .config and .scheme
    meta: dict[str, Any] = {"config": ours.config.to_dict() if own else None,
                            "scheme": ours.scheme.name if own else None, "protocol": protocol,
                            "batch_shape": [tuple(a.shape) for a in values if isinstance(a, torch.Tensor)],
                            "training": model.training, "seed": seed}
    if not own:
        meta["model"] = type(model).__name__
        meta["family"] = stacks_of(model)[0].structure.family
    return meta


def _forward(model: nn.Module, own: bool, args: tuple | dict, protocol: str, targets: torch.Tensor | None,
             seed: int, last: dict[str, torch.Tensor], batch: Any) -> torch.Tensor:
    """The scalar whose gradient is measured (see `measure`); ``last`` receives the final stream tensor."""
    ours: Any = model  # when own, a deepscalelm model with .loss and .hidden
    if protocol == "loss":
        if own:
            return ours.loss(*args, targets=targets)
        from ..diagnostics.core import _loss

        return _loss(model, batch, targets)
    if own:
        h = ours.hidden(*args)
    else:
        model(**args) if isinstance(args, dict) else model(*args)
        h = last.get("h")
        if h is None:
            raise ValueError(f"the last stream point of {type(model).__name__} was not called by its forward")
    gen = torch.Generator(device=h.device).manual_seed(seed)
    g = torch.randn(h.shape, generator=gen, device=h.device, dtype=h.dtype)
    return (h * g).sum()


def measure(model: nn.Module, batch: Any, protocol: str = "paper", targets: torch.Tensor | None = None,
            seed: int = 0) -> Trajectory:
    """Measure the moments of ``model`` on ``batch`` (one forward and one backward pass).

    ``model``: a deepscalelm model, or any model the structure registry knows (Hugging Face
    families, ``deepscalelm.register``); a foreign model is called as ``model(*batch)`` (or
    ``model(**batch)`` for a dict) and its records are keyed ``("", layer, "layer")`` / ``"final_norm"``.

    * ``protocol="paper"``: backpropagate ``loss = sum(h_final * G)`` with ``G`` iid N(0, 1) (drawn
      from a generator seeded with ``seed``) and ``h_final`` the final hidden state (after ``ln_f``
      for Pre-LN, after the last merge's LayerNorm for Post-LN; a foreign model's last stream
      point), as `deepscalelm.predict` assumes.
    * ``protocol="loss"``: backpropagate the model's own mean cross-entropy ``model.loss(*batch,
      targets=targets)`` (LMs: next-token / reconstruction targets by default; ViT: labels required;
      foreign models: as `deepscalelm.check`'s loss protocol).

    The model's train/eval mode is kept (dropout is active in train mode); no ``.grad`` of any
    parameter is touched (gradients are taken only with respect to the first stream point of each
    stack, the embedding outputs of a deepscalelm model).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    own = _is_own(model)
    args = _as_args(batch, own)
    points = _points(model)
    roots_at = {p[0] for p in _first_of_each_stack(points)}
    final_key = points[-1][0]
    fwd: dict[tuple, tuple[float, float, float]] = {}
    bwd: dict[tuple, tuple[float, float, float]] = {}
    blk: dict[tuple, tuple[float, float, float]] = {}
    roots: list[torch.Tensor] = []
    last: dict[str, torch.Tensor] = {}

    def stream_hook(key: tuple, is_root: bool) -> Callable:
        def hook(_module: nn.Module, _inp: Any, out: Any) -> None:
            if key in fwd:  # recomputation (activation checkpointing) or a second call
                return
            t = first_tensor(out)
            if t is None:
                raise ValueError(f"stream point {key} returned {type(out).__name__}, not a tensor [B, L, d]")
            fwd[key] = moments(t)
            if key == final_key:
                last["h"] = t
            if t.requires_grad:
                t.register_hook(lambda g: bwd.setdefault(key, moments(g)) and None)
                if is_root:
                    roots.append(t)
        return hook

    def block_hook(key: tuple) -> Callable:
        def hook(_module: nn.Module, _inp: Any, out: Any) -> None:
            blk.setdefault(key, moments(first_tensor(out)))  # type: ignore[arg-type]  # a block returns a tensor
        return hook

    handles = []
    for key, stream_mod, block_mod in points:
        handles.append(stream_mod.register_forward_hook(stream_hook(key, key in roots_at)))
        if block_mod is not None:
            handles.append(block_mod.register_forward_hook(block_hook(key)))
    try:
        with torch.enable_grad():
            loss = _forward(model, own, args, protocol, targets, seed, last, batch)
            if not roots:
                raise ValueError("no gradient reaches the first stream point: are the parameters frozen?")
            torch.autograd.grad(loss, roots, allow_unused=True)
    finally:
        for hd in handles:
            hd.remove()
    return Trajectory(_records(points, fwd, bwd, blk), source="measured",
                      meta=_meta(model, own, args, protocol, seed))


def _first_of_each_stack(points: list) -> list:
    """The first point of every stack (the gradient roots)."""
    seen: dict[str, Any] = {}
    for p in points:
        seen.setdefault(p[0][0], p)
    return list(seen.values())


def _records(points: list, fwd: dict, bwd: dict, blk: dict) -> list[Record]:
    nan = (math.nan, math.nan, math.nan)
    records = []
    for key, _stream, block_mod in points:
        if key not in fwd:
            raise ValueError(f"stream point {key} was not called by the forward pass")
        mean, var, corr = fwd[key]
        _gm, gvar, gcorr = bwd.get(key, nan)
        bvar = bcorr = None
        if block_mod is not None:
            _bm, bvar, bcorr = blk[key]
        records.append(Record(key[0], key[1], key[2], mean, var, corr, gvar, gcorr, bvar, bcorr))
    return records


__all__ = ["measure", "PROTOCOLS", "first_tensor"]
