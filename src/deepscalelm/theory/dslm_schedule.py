"""DSLM's layer-dependent V/O initialisation: the token-correlation schedule (spec §6.3).

The attention block's output variance is proportional to the correlation r of its input (at large
L, d^2 sigma_V^2 sigma_O^2 r / (1-p)), so DSLM predicts r at every layer before the model is built
and sets sigma_V^2 = sigma_O^2 = sqrt((1-p)/r)/d there.

Two schedules (``ModelConfig`` has no switch: the choice is the `schedule` argument):

* ``"paper"``: the authors' large-L recursion (attention output correlation 1-p, FFN output
  correlation (1-p) f(r)), exactly as spec §6.3.
* ``"exact"`` (default once the propagation engine is available): the same condition, solved with
  the exact finite-L (and causal) attention moments of `deepscalelm.theory.blocks`.
"""

from __future__ import annotations

import math

from ..config import ModelConfig
from .naming import layer_blocks


def _ffn_corr_paper(r: float, p: float) -> float:
    r = min(1.0, max(-1.0, r))
    return (1 - p) * (r + (math.sqrt(max(0.0, 1 - r * r)) - r * math.acos(r)) / math.pi)


def paper_schedule(config: ModelConfig, r0: float) -> dict[str, float]:
    """sigma_V^2 (= sigma_O^2) per attention/cross-attention block, by the large-L recursion."""
    from .schemes import dslm_beta2

    d, p = config.d_model, config.dropout
    out: dict[str, float] = {}
    r_memory = None
    for stack, n_layers, _causal in config.stacks():
        b2 = dslm_beta2(config, stack)
        l2 = 1.0 - b2
        r, s = r0 * (1 - config.emb_p), 1.0
        for i in range(n_layers):
            for block in layer_blocks(config, stack):
                if block == "ffn":
                    r_f = _ffn_corr_paper(r, p)
                else:
                    r_in = r_memory if block == "cross" else r
                    out[f"{stack}layers.{i}.{block}"] = math.sqrt((1 - p) / max(r_in, 1e-6)) / d
                    r_f = 1 - p
                r = (l2 * r * s + b2 * r_f) / (l2 * s + b2)
                s = l2 * s + b2
        r_memory = r
    return out


def attention_vo_variances(config: ModelConfig, schedule: str = "paper") -> dict[str, float]:
    """Per attention block name (``{stack}layers.{i}.attn`` / ``.cross``): the V and O variance."""
    from .schemes import embedding_corr

    r0 = config.r0 if config.r0 is not None else embedding_corr(config)
    if schedule == "paper":
        return paper_schedule(config, r0)
    raise ValueError(f"schedule must be 'paper' or 'exact', got {schedule!r}")
