"""Optimiser parameter groups: one learning rate for all ("standard") or a depth-aware one ("dslm").

``param_groups(model, lr, parametrization)`` returns AdamW parameter groups that cover every trainable
parameter exactly once. Each group carries ``lr`` (= ``lr * lr_scale``), ``lr_scale`` (so a schedule
can set ``group["lr"] = schedule(step) * group["lr_scale"]``), ``weight_decay``, ``eps`` and
``names`` (parameter names, for readable checkpoints).

Why a depth-aware rate (the ``"dslm"`` parametrisation), in the moments language of the theory.
Adam moves every entry of a parameter by about ``lr`` per step, whatever the gradient's scale. In a
stack of residual blocks x <- lam x + beta F(x) with unit moments (DSLM), a step that changes every
block's output F_k by a relative amount r changes the stream after the stack by about

    D r,   D = sum_k beta_k prod_{j > k} lam_j        (the *effective depth* of the stack),

because the updates of one step are aligned across blocks (they all follow the same loss gradient)
and add coherently, each carried to the top by the later blocks' lam. For DSLM (beta^2 = k/N,
lam^2 = 1 - beta^2) D = 2 (1 - lam^N) / beta ~ 2 (1 - e^(-k/2)) sqrt(N/k): it grows like sqrt(N). So
the same per-entry step that is safe at 2 layers moves a 128-layer stack ~8x further, and the best
rate falls with depth. ``"dslm"`` divides the rate of every parameter inside a stack's blocks by
D / D_ref, where D_ref is the effective depth of a reference DSLM stack of ``base_depth`` residual
blocks (default 4, a 2-layer model; k = 2); a rate tuned on the reference then transfers across
depth. Parameters outside the blocks (embeddings, final norm, head) keep ``lr``: their effect on the
output does not add up over depth.

The gradient of a block's parameters carries the factor beta (the branch multiplier); Adam's ``eps``
of those groups is scaled by beta / beta_ref so that eps keeps the same size relative to the gradient
at every depth. Weight decay is decoupled (AdamW: p <- p - lr * wd * p per step), so each group's
``weight_decay`` is divided by ``lr_scale``: the decay per step, lr * wd, is the same for every
parameter and depth. With ``base_width`` set, matrices inside blocks are also scaled by
``base_width / fan_in`` (the width rule of muP for Adam: a step moves y = x W by ~ lr * fan_in).

``"completep"`` is the learning-rate rule of CompleteP (Dey et al., arXiv 2505.01618) with alpha = 1,
for models initialised with the ``completep`` scheme (branch multiplier 1/L): block rates independent
of depth (the 1/L multiplier already makes the D above depth-independent), eps scaled by the branch
multiplier, and with ``base_width`` the same width rule.

Assumptions: unit moments at initialisation (a DSLM model, or one made stable with
`deepscalelm.apply`); on other schemes the merge coefficients are read all the same, but the
stream's growth is not accounted for. Residual blocks are found as modules with float attributes
``lam`` and ``beta`` (the project's own models), or passed as ``blocks``: one list of modules per stack.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import cast

from torch import nn

PARAMETRIZATIONS = ("standard", "dslm", "completep")
_NORM_TYPES: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d)
if hasattr(nn, "RMSNorm"):
    _NORM_TYPES = _NORM_TYPES + (nn.RMSNorm,)


def effective_depth(merges: Iterable[tuple[float, float]]) -> float:
    """D = sum_k beta_k prod_{j>k} lam_j over the (lam, beta) of a stack's merges, in forward order."""
    d = 0.0
    for lam, beta in merges:
        d = lam * d + beta
    return d


def _lam_beta(block: nn.Module) -> tuple[float, float]:
    """(lam, beta) of a residual block whose merge is x <- lam*x + beta*F(x) (float attributes)."""
    return float(cast(float, block.lam)), float(cast(float, block.beta))


def dslm_effective_depth(n_blocks: int, k: float = 2.0) -> float:
    """Effective depth of a DSLM stack of ``n_blocks`` merges with beta^2 = min(1, k / n_blocks)."""
    b2 = min(1.0, k / n_blocks)
    return effective_depth([(math.sqrt(1.0 - b2), math.sqrt(b2))] * n_blocks)


def find_stacks(model: nn.Module) -> list[list[nn.Module]]:
    """Residual blocks of ``model`` grouped by stack: consecutive modules with float ``lam``/``beta``,
    split where the parent container changes (encoder and decoder are two stacks)."""
    stacks: dict[str, list[nn.Module]] = {}
    for name, m in model.named_modules():
        if isinstance(getattr(m, "lam", None), float) and isinstance(getattr(m, "beta", None), float):
            parts = name.split(".")
            marks = [i for i, s in enumerate(parts) if s in ("layers", "h", "layer", "block")]
            cut = marks[-1] if marks else len(parts) - 2
            stacks.setdefault(".".join(parts[:cut]), []).append(m)
    return list(stacks.values())


def _is_decayed(p: nn.Parameter, norm_ids: set[int]) -> bool:
    return p.ndim >= 2 and id(p) not in norm_ids


def param_groups(model: nn.Module, lr: float, parametrization: str = "standard", *, weight_decay: float = 0.1,
                 eps: float = 1e-8, base_depth: int = 4, base_width: int | None = None,
                 blocks: Sequence[Sequence[nn.Module]] | None = None) -> list[dict]:
    """AdamW parameter groups for ``model`` (see the module docstring for the rule and its derivation).

    ``lr`` is the rate of the reference (for "standard": of every parameter). Matrices (ndim >= 2, not
    in a norm) are decayed, vectors (biases, norm gains) are not. ``blocks`` overrides the automatic
    search for residual blocks (one sequence of modules per stack; each module needs ``lam``/``beta``).
    """
    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(f"parametrization must be one of {', '.join(PARAMETRIZATIONS)}, got {parametrization!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0):
        raise ValueError(f"lr must be a finite number >= 0, got {lr!r}")
    if not isinstance(base_depth, int) or base_depth < 1:
        raise ValueError(f"base_depth must be an integer >= 1 (residual blocks of the reference), got {base_depth!r}")
    if base_width is not None and (not isinstance(base_width, int) or base_width < 1):
        raise ValueError(f"base_width must be None or an integer >= 1, got {base_width!r}")
    norm_ids = {id(p) for m in model.modules() if isinstance(m, _NORM_TYPES) for p in m.parameters(recurse=False)}
    # (lr_scale, eps_scale) per parameter inside a block
    scale: dict[int, tuple[float, float]] = {}
    if parametrization != "standard":
        # dslm: rates divided by D / D_ref; completep (alpha = 1): depth-independent rates; both scale
        # eps by beta relative to the reference depth's beta (DSLM: sqrt(2/N_0); CompleteP: 1)
        ref_d = dslm_effective_depth(base_depth)
        ref_beta = math.sqrt(min(1.0, 2.0 / base_depth)) if parametrization == "dslm" else 1.0
        stacks = find_stacks(model) if blocks is None else blocks
        if not stacks:
            raise ValueError(f"parametrization={parametrization!r} found no residual blocks in "
                             f"{type(model).__name__} (modules with float lam/beta): pass blocks=[[...], ...], "
                             "one list of blocks per stack, or use parametrization='standard'")
        for stack in stacks:
            for m in stack:
                if not hasattr(m, "lam") or not hasattr(m, "beta"):
                    raise ValueError(f"block {type(m).__name__} has no lam/beta attributes: pass blocks whose "
                                     "merge is x <- lam*x + beta*F(x), or use parametrization='standard'")
            depth = effective_depth(_lam_beta(m) for m in stack)
            for m in stack:
                for p in m.parameters():
                    s = ref_d / depth if depth > 0 and parametrization == "dslm" else 1.0
                    if base_width is not None and _is_decayed(p, norm_ids):
                        s *= base_width / p.shape[-1]
                    scale[id(p)] = (s, _lam_beta(m)[1] / ref_beta)
    buckets: dict[tuple[bool, float, float], tuple[list[nn.Parameter], list[str]]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        s, e = scale.get(id(p), (1.0, 1.0))
        key = (_is_decayed(p, norm_ids), round(s, 12), round(e, 12))
        buckets.setdefault(key, ([], []))
        buckets[key][0].append(p)
        buckets[key][1].append(name)
    groups = []
    for (decayed, s, e), (params, names) in sorted(buckets.items(), key=lambda kv: (not kv[0][0], -kv[0][1])):
        wd = (weight_decay / s if s > 0 else 0.0) if decayed else 0.0
        groups.append({"params": params, "names": names, "lr": lr * s, "lr_scale": s, "weight_decay": wd,
                       "eps": eps * e})
    return groups


__all__ = ["PARAMETRIZATIONS", "param_groups", "effective_depth", "dslm_effective_depth", "find_stacks"]
