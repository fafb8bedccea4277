"""`check(model, batch, ...)`: one forward + backward pass, per-layer statistics and verdicts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .recorder import Recorder
from .report import CheckReport
from .targets import AttentionSpec, StreamPoint, resolve_targets
from .verdicts import Verdict, judge

__all__ = ["check", "build_rows", "PROTOCOLS"]

PROTOCOLS = ("loss", "paper")


def _call(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    raise ValueError(f"batch must be a tensor, a tuple of tensors or a dict of keyword arguments, "
                     f"got {type(batch).__name__}")


def _ids_of(batch: Any) -> torch.Tensor | None:
    """The token ids of a batch when it is ids [B, L] (a tensor, the first of a tuple, or input_ids)."""
    t = batch
    if isinstance(batch, dict):
        t = batch.get("input_ids")
    elif isinstance(batch, (tuple, list)) and batch:
        t = batch[0]
    if isinstance(t, torch.Tensor) and t.dim() == 2 and not t.dtype.is_floating_point:
        return t
    return None


def _ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"targets of shape {tuple(targets.shape)} do not fit logits of shape {tuple(logits.shape)} "
                         "(expected the logits' shape without the last axis)")
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100)


def _loss(model: nn.Module, batch: Any, targets: torch.Tensor | None) -> torch.Tensor:
    """The loss of the "loss" protocol: a deepscalelm model's own ``loss``; else cross-entropy against
    ``targets``; else the model output's ``.loss`` (Hugging Face with labels); else next-token
    cross-entropy of logits [B, L, V] against the input ids shifted by one."""
    if hasattr(model, "loss") and callable(model.loss) and hasattr(model, "stacks"):
        args = (batch,) if isinstance(batch, torch.Tensor) else tuple(batch)
        return model.loss(*args, targets=targets)
    out = _call(model, batch)
    logits = out if isinstance(out, torch.Tensor) else getattr(out, "logits", None)
    if targets is not None:
        if logits is None:
            raise ValueError("targets given but the model output has no logits")
        return _ce(logits, targets)
    loss = getattr(out, "loss", None)
    if isinstance(loss, torch.Tensor):
        return loss
    ids = _ids_of(batch)
    if logits is not None and ids is not None and logits.dim() == 3 and logits.shape[:2] == ids.shape:
        return _ce(logits[:, :-1], ids[:, 1:])
    raise ValueError("protocol='loss' needs a loss: pass targets=, a batch the model computes a loss on "
                     "(e.g. Hugging Face labels=), or use protocol='paper'")


def build_rows(points: Sequence[StreamPoint], specs: Sequence[AttentionSpec], rec: Recorder,
               ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows (one per stream point) and per-module attention entries from a filled `Recorder`.

    An attention module is attached to the stream point whose name equals it or is its prefix
    (the block or layer containing it)."""
    nan4 = (math.nan, math.nan, math.nan, True)
    rows: list[dict[str, Any]] = []
    for i, p in enumerate(points):
        if p.name not in rec.fwd:
            raise ValueError(f"stream module {p.name!r} was not called by the forward pass; name modules "
                             "the model actually runs")
        mean, var, corr, finite = rec.fwd[p.name]
        _gm, gvar, gcorr, gfin = rec.grad.get(p.name, nan4)
        rows.append({"index": i, "name": p.name, "stack": p.stack, "layer": p.layer, "block": p.block,
                     "mean": mean, "var": var, "corr": corr, "finite": finite, "grad_var": gvar,
                     "grad_corr": gcorr, "grad_finite": gfin, "logit_max": None, "logit_var": None,
                     "entropy": None, "entropy_norm": None, "pred_var": None, "pred_corr": None,
                     "pred_grad_var": None, "pred_grad_corr": None})
    attention: list[dict[str, Any]] = []
    for s in specs:
        st = rec.attn.get(s.name)
        if st is None:
            continue
        owner = next((r for r in rows if s.name == r["name"] or s.name.startswith(r["name"] + ".")), None)
        entry = {"name": s.name, "stack": owner["stack"] if owner else "", "layer": owner["layer"] if owner else None,
                 **st}
        attention.append(entry)
        if owner is not None:
            def agg(fn, key, cur, st=st):  # st bound now: agg is called in this iteration only
                vals = [v for v in st[key] if math.isfinite(v)] or [math.nan]
                v = fn(vals)
                return v if cur is None else fn([cur, v])
            owner["logit_max"] = agg(max, "logit_max", owner["logit_max"])
            owner["logit_var"] = agg(max, "logit_var", owner["logit_var"])
            owner["entropy"] = agg(min, "entropy", owner["entropy"])
            owner["entropy_norm"] = agg(min, "entropy_norm", owner["entropy_norm"])
    return rows, attention


def unsupported_attention(specs: Sequence[AttentionSpec]) -> list[Verdict]:
    """One ``attention_unsupported`` warning `Verdict` per attention module whose logits cannot be
    reproduced from what the hooks read (its statistics are left out of the report)."""
    return [Verdict("attention_unsupported", "warning", s.unsupported, name=s.name)
            for s in specs if s.unsupported is not None]


def _output_gradient(rows: list[dict[str, Any]], key: tuple[str, int, str]) -> Any:
    """The measured gradient moments at the row joining the theory's last record ``key`` (the final
    hidden state), as a `Grad`; None when that row is missing or its gradient is not finite and positive."""
    from ..theory.moments import Grad

    row = next((r for r in rows if (r["stack"], r["layer"], r["block"]) == key), None)
    if row is None and key[2] != "final_norm":
        row = next((r for r in reversed(rows) if r["stack"] == key[0] and r["layer"] == key[1]
                    and r["block"] == "layer"), None)
    if row is None or not (math.isfinite(row["grad_var"]) and row["grad_var"] > 0):
        return None
    corr = row["grad_corr"] if math.isfinite(row["grad_corr"]) else 0.0
    return Grad(float(row["grad_var"]), min(1.0, max(-1.0, float(corr))))


def _rescale_gradients(rows: list[dict[str, Any]]) -> str | None:
    """Fallback when the final hidden state's gradient is not measured: scale the predicted gradient
    variances so they equal the measured one at the last row having both (token correlation of the
    seed stays 0). Returns a description of what was done, or None when no row has both."""
    both = [r for r in rows if r["pred_grad_var"] and math.isfinite(r["grad_var"]) and r["grad_var"] > 0]
    if not both:
        return None
    scale = both[-1]["grad_var"] / both[-1]["pred_grad_var"]
    for r in rows:
        if r["pred_grad_var"] is not None:
            r["pred_grad_var"] *= scale
    return f"unit variance rescaled by {scale:.4g} to the measured value at {both[-1]['name']}"


def _join_prediction(rows: list[dict[str, Any]], config: Any, scheme: Any, protocol: str) -> dict[str, Any]:
    """Fill the ``pred_*`` columns from `deepscalelm.predict`; returns provenance for ``meta``.

    Keys join exactly; a foreign model's ``"layer"`` row joins the last predicted record of that
    layer. Protocol "paper" backpropagates an iid N(0, 1) gradient from the final hidden state,
    which is the theory's default seed (variance 1, token correlation 0). Protocol "loss"
    backpropagates the model's loss, whose gradient at the final hidden state has neither unit
    variance nor zero token correlation (next-token cross-entropy at initialisation gives every
    position roughly ``-(e_target - mean e)``, correlated across positions through frequent
    targets); the theory is then seeded with the gradient variance and correlation measured there,
    so that it predicts what this protocol measures (``meta["pred_seed"]``).

    When the theory does not cover ``config`` (`predict` raises ValueError, e.g. a block whose moments
    it has no formula for), the ``pred_*`` columns stay None and the reason is returned as
    ``prediction_error``: the measured diagnosis is still reported."""
    from ..theory.model import predict
    from ..theory.moments import Grad

    seed = Grad(1.0, 0.0)
    seeded_from = "unit variance, zero correlation (the paper's protocol)"
    try:
        traj = predict(config, scheme)
        if protocol == "loss" and len(traj):
            measured = _output_gradient(rows, traj.records[-1].key)
            if measured is not None:
                seed, seeded_from = measured, "measured at the final hidden state"
                traj = predict(config, scheme, seed)
    except ValueError as exc:
        return {"predicted": False, "prediction_error": str(exc), "config": config.to_dict()}
    index = {r.key: r for r in traj}
    last_of_layer: dict[tuple[str, int], Any] = {}
    for r in traj:
        if r.block != "final_norm":
            last_of_layer[(r.stack, r.layer)] = r
    for row in rows:
        rec = index.get((row["stack"], row["layer"], row["block"]))
        if rec is None and row["block"] == "layer":
            rec = last_of_layer.get((row["stack"], row["layer"]))
        if rec is not None:
            row.update(pred_var=rec.var, pred_corr=rec.corr, pred_grad_var=rec.grad_var, pred_grad_corr=rec.grad_corr)
    if protocol == "loss" and seed == Grad(1.0, 0.0):
        seeded_from = _rescale_gradients(rows) or seeded_from
    return {"predicted": True, "pred_seed": {"grad_var": seed.var, "grad_corr": seed.corr, "source": seeded_from},
            "config": config.to_dict()}


def check(model: nn.Module, batch: Any, config: Any = None, *, streams: str | Sequence[str] | None = None,
          attention: str | Sequence[str] | Sequence[AttentionSpec] | None = None, preset: str | None = None,
          protocol: str = "loss", targets: torch.Tensor | None = None, causal: bool | None = None,
          seed: int = 0, max_sequences: int | None = None) -> CheckReport:
    """Diagnose signal propagation in ``model`` with one forward and one backward pass on ``batch``.

    * ``batch``: what the model is called with — a tensor (token ids [B, L] or images), a tuple of
      positional tensors, or a dict of keyword arguments (Hugging Face ``input_ids=...``). L >= 2.
    * ``streams``/``attention``/``preset``/``causal``: which modules carry the residual stream and
      compute attention (see `deepscalelm.diagnostics.targets`); by default deepscalelm models use
      preset ``"dslm"`` and other models their structure-registry entry (`deepscalelm.structure`).
    * ``protocol="loss"``: backpropagate the model's loss (see `_loss`); ``"paper"``: backpropagate
      ``sum(h * G)`` with ``G`` iid N(0, 1) (seeded by ``seed``) and ``h`` the last stream point
      (the final hidden state), the protocol `deepscalelm.predict` assumes.
    * ``config``: a `ModelConfig` for the theory's prediction (default: ``model.config`` when it is
      one); predictions join the rows by (stack, layer, block).
    * ``max_sequences``: attention statistics on the first sequences only (default all).

    The model's train/eval mode is kept; dropout draws come from a generator seeded with ``seed``
    (the global RNG state is restored afterwards). No parameter's ``.grad`` is touched: gradients
    are taken with ``torch.autograd.grad``. Non-finite values become verdicts, not exceptions.
    """
    from ..config import ModelConfig

    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    ids = _ids_of(batch)
    if ids is not None and ids.shape[1] < 2:
        raise ValueError(f"sequence length L={ids.shape[1]}: the token-to-token correlation needs at least "
                         "2 tokens per sequence")
    if config is None and isinstance(getattr(model, "config", None), ModelConfig):
        config = model.config
    if config is not None and not isinstance(config, ModelConfig):
        raise ValueError(f"config must be a deepscalelm.ModelConfig or None, got {type(config).__name__}")
    points, specs, used = resolve_targets(model, streams, attention, preset, causal)
    rec = Recorder(model, points, specs, grad_hooks=False, keep_outputs=True, max_sequences=max_sequences)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    devices = sorted({p.device.index or 0 for _, p in params if p.device.type == "cuda"})
    rec.attach()
    loss_value = math.nan
    try:
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            torch.manual_seed(seed)
            if protocol == "paper":
                _call(model, batch)
                h = rec.outputs.get(points[-1].name)
                if h is None:
                    raise ValueError(f"the last stream point {points[-1].name!r} was not called")
                gen = torch.Generator(device=h.device).manual_seed(seed)
                g = torch.randn(h.shape, generator=gen, device=h.device, dtype=h.dtype)
                loss = (h * g).sum()
            else:
                loss = _loss(model, batch, targets)
            loss_value = float(loss.detach())
            outs = [(n, t) for n, t in rec.outputs.items() if t.requires_grad]
            inputs = [t for _, t in outs] + [p for _, p in params]
            if not loss.requires_grad or not inputs:
                raise ValueError("the loss does not depend on any parameter or stream tensor that requires grad")
            grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    finally:
        rec.detach()
    for (name, _t), g in zip(outs, grads[:len(outs)], strict=True):
        rec.record_grad(name, g)
    weights = []
    for (name, p), g in zip(params, grads[len(outs):], strict=True):
        gn = None if g is None else float(g.detach().to(torch.float64).norm())  # None: unused parameter
        weights.append({"name": name, "shape": list(p.shape), "grad_norm": gn,
                        "weight_norm": float(p.detach().to(torch.float64).norm())})
    rows, attn = build_rows(points, specs, rec)
    rec.reset()
    meta: dict[str, Any] = {"protocol": protocol, "preset": used, "loss": loss_value, "seed": seed,
                            "training": model.training, "model": type(model).__name__,
                            "batch_shape": _shapes(batch), "predicted": False}
    if config is not None:
        meta.update(_join_prediction(rows, config, getattr(model, "scheme", None), protocol))
    bad_w = [w["name"] for w in weights if isinstance(w["grad_norm"], float) and not math.isfinite(w["grad_norm"])]
    verdicts = judge(rows, attn) + unsupported_attention(specs)
    if not math.isfinite(loss_value):
        verdicts.insert(0, Verdict("nonfinite_loss", "error", f"the loss is {loss_value}",
                                   details={"loss": loss_value}))
    meta["nonfinite_weight_grads"] = bad_w
    return CheckReport(rows, attn, weights, verdicts, meta)


def _shapes(batch: Any) -> Any:
    if isinstance(batch, torch.Tensor):
        return list(batch.shape)
    if isinstance(batch, dict):
        return {k: list(v.shape) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    if isinstance(batch, (tuple, list)):
        return [list(b.shape) for b in batch if isinstance(b, torch.Tensor)]
    return None
