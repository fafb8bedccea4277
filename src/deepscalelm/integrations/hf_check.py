"""`check_hf`: `deepscalelm.diagnostics.check` on a Hugging Face model, in DSLM units when it was folded.

A checkpoint written by `deepscalelm.apply` with a Pre-LN scheme whose merges have lam < 1 carries
the residual scaling folded into its weights: its stream after block j is the DSLM stream divided by
c_j = lam_0 ... lam_j (`deepscalelm.fold`). `check_hf` measures the stock model and multiplies the
measured variance after layer i by c^2 (and the gradient variance by 1/c^2, since d/dy = c d/dx for
y = x / c), so the rows, the verdicts and the comparison with `deepscalelm.predict` are in the
units of the theory. The final norm's output is scale-free, but a tied head's ``head_scale`` was
folded into its gain: that row is divided by the gain (variance by its square).
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from ..config import ModelConfig
from ..diagnostics import check
from ..diagnostics.report import CheckReport

__all__ = ["check_hf", "folded_scales"]


def folded_scales(model: nn.Module, config: ModelConfig) -> tuple[list[float], float] | None:
    """(c after each layer, index i-1 for layer i; the gain folded into the final norm) of a model
    folded by `apply`, or None when it is not folded.

    A model counts as folded when its Hugging Face config records a `deepscalelm.apply` scheme
    (``deepscalelm_scheme``) and ``config`` is Pre-LN (Post-LN folds keep the stream's scale). The
    final norm of a tied head carries the scheme's ``head_scale`` (1 otherwise).
    """
    from ..fold import _tied, stream_scales
    from ..structure import resolve
    from ..theory.schemes import get_scheme

    applied = getattr(getattr(model, "config", None), "deepscalelm_scheme", None)
    if not applied or config.norm != "pre":
        return None
    res = resolve(model)
    scheme = get_scheme(config.replace(tie_embeddings=_tied(model, res)))
    head_gain = float(scheme.scales.get("head_scale", 1.0)) if _tied(model, res) else 1.0
    return stream_scales(res, scheme)[1::2], head_gain  # after each layer's second (FFN) block


def _unfold(rows: list[dict[str, Any]], scales: list[float], head_gain: float) -> None:
    for r in rows:
        if r["block"] == "final_norm":
            c2 = 1.0 / head_gain ** 2  # the theory's final hidden state is norm(x), the head scales it
        elif r["block"] == "layer" and 1 <= r["layer"] <= len(scales):
            c2 = scales[r["layer"] - 1] ** 2
        else:
            continue
        r["var"] *= c2
        if r["grad_var"] is not None and math.isfinite(r["grad_var"]):
            r["grad_var"] /= c2


def check_hf(model: nn.Module, batch: Any, config: ModelConfig | None, *, protocol: str = "loss",
             seed: int = 0) -> CheckReport:
    """Measure ``model`` on ``batch`` (see `deepscalelm.diagnostics.check`) and join the prediction.

    ``config``: the model's `ModelConfig` (`ModelConfig.from_hf`, with the applied scheme) or None
    for measured only. When `deepscalelm.predict` does not cover ``config`` (e.g. RoPE), the report
    is measured only and ``meta["prediction_error"]`` says why. ``meta["dslm_units"]`` records the
    unfolding of a folded checkpoint (module docstring).
    """
    from ..diagnostics.core import _join_prediction
    from ..diagnostics.verdicts import Verdict, judge

    report = check(model, batch, None, protocol=protocol, seed=seed)
    folded = folded_scales(model, config) if config is not None else None
    if folded is not None:
        scales, head_gain = folded
        _unfold(report.rows, scales, head_gain)
        report.meta["dslm_units"] = (f"measured stream variances x c^2 (gradients / c^2), c = product of the "
                                     f"folded lam, from {scales[0]:.4g} after layer 1 to {scales[-1]:.4g}"
                                     + (f"; final norm / its folded head gain {head_gain:.4g}"
                                        if head_gain != 1.0 else ""))
    if config is not None:
        report.meta.update(_join_prediction(report.rows, config, None, protocol))
    verdicts = judge(report.rows, report.attention)
    if not math.isfinite(report.meta["loss"]):
        verdicts.insert(0, Verdict("nonfinite_loss", "error", f"the loss is {report.meta['loss']}",
                                   details={"loss": report.meta["loss"]}))
    report.verdicts = verdicts
    return report
