"""DSLM's layer-dependent V/O initialisation: the token-correlation schedule (DSLM's V/O correlation schedule).

The attention block's output variance is proportional to the correlation r of its input (at large
L, d^2 sigma_V^2 sigma_O^2 r / (1-p)), so DSLM predicts r at every layer before the model is built
and sets sigma_V^2 = sigma_O^2 = sqrt((1-p)/r)/d there.

Two schedules (``ModelConfig`` has no switch: the choice is the `schedule` argument):

* ``"paper"``: the authors' large-L recursion (attention output correlation 1-p, FFN output
  correlation (1-p) f(r)), exactly as the authors give it.
* ``"exact"`` (default once the propagation engine is available): the same condition, solved with
  the exact finite-L (and causal) attention moments of `deepscalelm.theory.blocks`.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

from ..config import ModelConfig
from .naming import layer_blocks

if TYPE_CHECKING:
    from .schemes import Scheme


def _ffn_corr_paper(r: float, p: float) -> float:
    r = min(1.0, max(-1.0, r))
    return (1 - p) * (r + (math.sqrt(max(0.0, 1 - r * r)) - r * math.acos(r)) / math.pi)


def paper_schedule(config: ModelConfig, r0: float) -> dict[str, float]:
    """sigma_V^2 (= sigma_O^2) per attention/cross-attention block, by the large-L recursion."""
    from .schemes import dslm_beta2

    d, p = config.d_model, config.dropout
    out: dict[str, float] = {}
    r_memory: float | None = None
    for stack, n_layers, _causal in config.stacks():
        b2 = dslm_beta2(config, stack)
        l2 = 1.0 - b2
        r, s = r0 * (1 - config.emb_p), 1.0
        for i in range(n_layers):
            for block in layer_blocks(config, stack):
                if block == "ffn":
                    r_f = _ffn_corr_paper(r, p)
                else:
                    r_in = cast(float, r_memory) if block == "cross" else r   # the encoder ran first
                    out[f"{stack}layers.{i}.{block}"] = math.sqrt((1 - p) / max(r_in, 1e-6)) / d
                    r_f = 1 - p
                r = (l2 * r * s + b2 * r_f) / (l2 * s + b2)
                s = l2 * s + b2
        r_memory = r
    return out


def exact_schedule(config: ModelConfig, weight_var: dict[str, float],
                   merges: dict[str, tuple[float, float]], forward_out: dict[str, tuple[Any, ...]] | None = None
                   ) -> dict[str, float]:
    """sigma_V^2 (= sigma_O^2) per attention block so that its output variance is exactly 1.

    Runs the forward propagation of `deepscalelm.theory.model` with every other weight already set;
    at each attention block the output variance is quadratic in the common V/O variance s
    (var_F = s^2 * var_F(s=1)), so s = 1/sqrt(var_F(s=1)) given the block's actual input moments.
    ``forward_out``, when given, receives {stack: (embedding signal, steps, stack output)}: the
    forward pass of the finished model, which `predict` can reuse instead of recomputing it.
    """
    from .model import _UnitVOSchedule, embedding_signal, forward_stack, norm_of

    resolve = _UnitVOSchedule(config, weight_var.__getitem__)
    chosen = resolve.chosen
    # embedding_signal reads only the weight variances: no need to copy and validate them all
    probe = SimpleNamespace(weight_var=weight_var)
    memory = None
    for stack, _n, _c in config.stacks():
        emb = embedding_signal(config, cast("Scheme", probe), stack)
        steps, out = forward_stack(config, weight_var.__getitem__, merges.__getitem__, stack, emb,
                                   memory, vo_resolver=resolve)
        if forward_out is not None:
            forward_out[stack] = (emb, steps, out)
        if config.norm == "pre":
            out = norm_of(config).forward(out)
        memory = out
    return chosen


def attention_vo_variances(config: ModelConfig, weight_var: dict[str, float] | None = None,
                           merges: dict[str, tuple[float, float]] | None = None,
                           forward_out: dict[str, tuple[Any, ...]] | None = None) -> dict[str, float]:
    """Per attention block name (``{stack}layers.{i}.attn`` / ``.cross``): the V (= O) variance.

    Uses ``config.corr_schedule``: "paper" (the authors' recursion) or "exact" (needs the other
    weights' variances and the merges).
    """
    from .schemes import embedding_corr

    if config.corr_schedule == "paper":
        r0 = config.r0 if config.r0 is not None else embedding_corr(config)
        return paper_schedule(config, r0)
    if weight_var is None or merges is None:
        raise ValueError("the exact schedule needs the other weights' variances and the merges")
    return exact_schedule(config, weight_var, merges, forward_out)
