"""Plain-word verdicts on measured per-layer statistics, with documented thresholds.

Every verdict is computed from the *layer-output series* of each stack: for layer l = 1..N the last
stream point of that layer (deepscalelm models: the FFN merge; foreign models: the layer module).
The thresholds below are the ones docs/diagnostics.md lists and justifies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Verdict", "judge", "linear_fit", "MIN_FIT_LAYERS", "FIT_R2", "VAR_GROWTH_RATIO",
           "GRAD_RATIO", "RANK_COLLAPSE_CORR", "SATURATION_LOGIT_VAR", "PRED_VAR_FACTOR", "PRED_CORR_DIFF",
           "prediction_mismatch"]

#: fewer layer outputs than this: no trend verdicts (a fit through 3 points says little)
MIN_FIT_LAYERS = 4
#: a linear (or log-linear) fit "explains" a trend when its R^2 reaches this
FIT_R2 = 0.9
#: forward variance changing by more than this factor between the first and last layer output is
#: reported (DSLM and Post-LN keep it within a few tens of percent by construction)
VAR_GROWTH_RATIO = 4.0
#: gradient variance changing by more than this factor (one order of magnitude) across the stack
GRAD_RATIO = 10.0
#: token correlation above this from some layer to the output: rank collapse
RANK_COLLAPSE_CORR = 0.95
#: attention-logit variance above this: a softmax over L Gaussian logits of variance v has about
#: L * exp(-v) effective keys (participation ratio), i.e. fewer than one for any L < 22,000
SATURATION_LOGIT_VAR = 10.0
#: measured and predicted forward or gradient variance differing by more than this factor (either
#: way) at some stream point: the theory does not describe this model/batch. Healthy DeepScaleLM
#: models agree within a factor of about 1.6 (48-layer decoder, d_model 128, one batch of 8 x 128)
PRED_VAR_FACTOR = 2.0
#: measured and predicted token correlation differing by more than this (absolute) at some point
PRED_CORR_DIFF = 0.2


@dataclass(frozen=True)
class Verdict:
    """One finding: ``kind`` (machine name), ``severity`` ("error" or "warning"), ``message`` (plain
    words), the ``stack``/``layer``/``name`` it points at and the numbers behind it (``details``)."""

    kind: str
    severity: str
    message: str
    stack: str = ""
    layer: int | None = None
    name: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["details"] = {k: (repr(v) if isinstance(v, float) and not math.isfinite(v) else v)
                        for k, v in d["details"].items()}
        return d


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares line y = a + b x: (a, b, R^2). R^2 = 1 - SS_res / SS_tot (1.0 when y is constant)."""
    n = len(xs)
    if n < 2 or len(ys) != n:
        raise ValueError(f"linear_fit needs >= 2 paired points, got {n} and {len(ys)}")
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    b = sxy / sxx if sxx > 0 else 0.0
    a = my - b * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys, strict=True))
    return a, b, (1.0 - ss_res / ss_tot) if ss_tot > 0 else 1.0


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def layer_series(rows: list[dict], stack: str) -> list[dict]:
    """The last stream point of each layer 1..N of ``stack`` (no embedding, no final norm)."""
    last: dict[int, dict] = {}
    for r in rows:
        if r["stack"] == stack and r["layer"] >= 1 and r["block"] not in ("embedding", "final_norm"):
            last[r["layer"]] = r
    return [last[k] for k in sorted(last)]


def _where(stack: str, layer: int) -> str:
    return f"layer {layer}" + (f" of the {stack}" if stack else "")


def _nonfinite(rows: list[dict]) -> list[Verdict]:
    out = []
    bad = [r for r in rows if not r["finite"]]
    if bad:
        r = bad[0]
        out.append(Verdict("nonfinite_forward", "error",
                           f"non-finite values (NaN/inf) in the forward stream, first at "
                           f"{_where(r['stack'], r['layer'])} "
                           f"({r['name']}, {r['block']})", r["stack"], r["layer"], r["name"]))
    gbad = [r for r in rows if not r["grad_finite"]]
    if gbad and not bad:
        r = gbad[-1]  # the backward pass runs from the output: its first non-finite point is the last one
        out.append(Verdict("nonfinite_gradient", "error",
                           f"non-finite gradients (NaN/inf), first (coming from the output) at "
                           f"{_where(r['stack'], r['layer'])} ({r['name']}, {r['block']})",
                           r["stack"], r["layer"], r["name"]))
    return out


def _variance(series: list[dict], stack: str) -> list[Verdict]:
    xs = [float(r["layer"]) for r in series]
    ys = [r["var"] for r in series]
    if len(ys) < MIN_FIT_LAYERS or not all(math.isfinite(y) and y > 0 for y in ys):
        return []
    ratio = ys[-1] / ys[0]
    if 1 / VAR_GROWTH_RATIO < ratio < VAR_GROWTH_RATIO:
        return []
    _a, slope, r2 = linear_fit(xs, ys)
    _la, rate, r2log = linear_fit(xs, [math.log(y) for y in ys])
    d = {"ratio": ratio, "slope": slope, "r2_linear": r2, "factor_per_layer": math.exp(rate), "r2_log": r2log}
    where = f" of the {stack}" if stack else ""
    span = f"×{_fmt(ratio)} from layer {series[0]['layer']} to {series[-1]['layer']}"
    if ratio > 1:
        if r2 >= FIT_R2 and r2 >= r2log:
            msg = (f"forward variance{where} grows linearly with depth ({slope:+.3g} per layer, R² {r2:.2f}, {span}): "
                   "Pre-LN without residual scaling — consider DSLM (scheme='dslm')")
        elif r2log >= FIT_R2:
            msg = (f"forward variance{where} grows geometrically (×{math.exp(rate):.3g} per layer, R² {r2log:.2f}, "
                   f"{span}): the forward signal explodes")
        else:
            msg = f"forward variance{where} grows {span} without a clean linear or geometric trend"
        return [Verdict("variance_growth", "warning", msg, stack, series[-1]["layer"], series[-1]["name"], d)]
    kind = "linearly" if r2 >= FIT_R2 and r2 >= r2log else "geometrically" if r2log >= FIT_R2 else ""
    msg = f"forward variance{where} shrinks {kind + ' ' if kind else ''}with depth ({span}): the signal vanishes"
    return [Verdict("variance_shrink", "warning", msg, stack, series[-1]["layer"], series[-1]["name"], d)]


def _gradients(series: list[dict], stack: str) -> list[Verdict]:
    xs = [float(r["layer"]) for r in series]
    ys = [r["grad_var"] for r in series]
    if len(ys) < MIN_FIT_LAYERS or not all(math.isfinite(y) and y > 0 for y in ys):
        return []
    ratio = ys[0] / ys[-1]  # input side over output side
    if 1 / GRAD_RATIO < ratio < GRAD_RATIO:
        return []
    _la, rate, r2log = linear_fit(xs, [math.log(y) for y in ys])
    per_layer = math.exp(-rate)  # factor from layer l+1 to layer l, i.e. toward the input
    d = {"ratio_input_over_output": ratio, "factor_per_layer_toward_input": per_layer, "r2_log": r2log}
    where = f" of the {stack}" if stack else ""
    direction = "shrink" if ratio < 1 else "grow"
    lo, hi = series[0]["layer"], series[-1]["layer"]
    tail = f"layer {lo} gets {_fmt(ratio)}× the gradient variance of layer {hi}"
    if r2log >= FIT_R2:
        msg = (f"gradients{where} {direction} geometrically toward the input (×{per_layer:.3g} per layer, "
               f"R² {r2log:.2f}; {tail})")
        if ratio < 1:
            msg += ": vanishing gradients, typical of Post-LN without DeepNorm/DSLM scaling"
        kind = "gradient_geometric"
    else:
        msg = f"gradients{where} {direction} toward the input, not geometrically (log-linear R² {r2log:.2f}; {tail})"
        kind = "gradient_ratio"
    return [Verdict(kind, "warning", msg, stack, lo, series[0]["name"], d)]


def _rank_collapse(series: list[dict], stack: str) -> list[Verdict]:
    cs = [r["corr"] for r in series]
    if not cs or not all(math.isfinite(c) for c in cs) or cs[-1] <= RANK_COLLAPSE_CORR:
        return []
    i = len(cs) - 1
    while i > 0 and cs[i - 1] > RANK_COLLAPSE_CORR:
        i -= 1
    r = series[i]
    where = f" of the {stack}" if stack else ""
    msg = (f"token correlation{where} above {RANK_COLLAPSE_CORR} from layer {r['layer']} on (reaching "
           f"{cs[-1]:.3f} at layer {series[-1]['layer']}): rank collapse — tokens become indistinguishable")
    return [Verdict("rank_collapse", "warning", msg, stack, r["layer"], r["name"],
                    {"first_layer": r["layer"], "final_corr": cs[-1]})]


def _saturation(rows: list[dict], attention: list[dict]) -> list[Verdict]:
    hits = []
    for a in attention:
        for h, v in enumerate(a["logit_var"]):
            if math.isfinite(v) and v > SATURATION_LOGIT_VAR:
                hits.append((a, h, v))
    if not hits:
        return []
    first = hits[0]
    worst = max(hits, key=lambda t: t[2])
    a, h, v = first
    msg = (f"attention-logit variance {v:.3g} in {_where(a['stack'], a['layer'])} (head {h} of {a['name']}, "
           f"max logit {a['logit_max'][h]:.3g}): softmax saturating")
    if len(hits) > 1:
        msg += (f"; {len(hits)} heads above {SATURATION_LOGIT_VAR:g}, worst {worst[2]:.3g} in "
                f"{_where(worst[0]['stack'], worst[0]['layer'])}")
    return [Verdict("softmax_saturation", "warning", msg, a["stack"], a["layer"], a["name"],
                    {"logit_var": v, "head": h, "n_heads_saturated": len(hits), "worst_logit_var": worst[2]})]


def _worst(rows: list[dict], key: str, relative: bool) -> tuple[float, dict | None, int]:
    """(largest disagreement, its row, rows beyond tolerance) between ``key`` and ``pred_<key>``.

    Relative: the factor max(m/p, p/m) (tolerance `PRED_VAR_FACTOR`); else |m - p| (`PRED_CORR_DIFF`)."""
    tol = PRED_VAR_FACTOR if relative else PRED_CORR_DIFF
    worst, where, n_bad = (1.0 if relative else 0.0), None, 0
    for r in rows:
        m, p = r.get(key), r.get("pred_" + key)
        if p is None or m is None or not (math.isfinite(m) and math.isfinite(p)):
            continue
        if relative:
            if m <= 0 or p <= 0:
                continue
            gap = max(m / p, p / m)
        else:
            gap = abs(m - p)
        n_bad += gap > tol
        if gap > worst:
            worst, where = gap, r
    return worst, where, n_bad


def prediction_mismatch(rows: list[dict]) -> list[Verdict]:
    """One verdict per quantity (forward variance, token correlation, gradient variance) whose
    measured and predicted values disagree beyond the tolerance at some stream point."""
    out = []
    for key, desc, relative in (("var", "forward variance", True), ("corr", "token correlation", False),
                                ("grad_var", "gradient variance", True)):
        worst, r, n_bad = _worst(rows, key, relative)
        if r is None or not n_bad:
            continue
        tol = PRED_VAR_FACTOR if relative else PRED_CORR_DIFF
        gap = f"×{worst:.3g} apart" if relative else f"{worst:.3f} apart"
        limit = f"tolerance ×{tol:g}" if relative else f"tolerance {tol:g}"
        point = (f"the embedding output{' of the ' + r['stack'] if r['stack'] else ''}" if r["block"] == "embedding"
                 else f"{_where(r['stack'], r['layer'])} ({r['block']})")
        msg = (f"measured and predicted {desc} disagree at {point}: {r[key]:.4g} measured vs "
               f"{r['pred_' + key]:.4g} predicted, {gap} ({limit}; {n_bad} of {len(rows)} points beyond it): "
               "the theory does not describe this model on this batch (small widths, batches and sequences "
               "also add sampling noise)")
        out.append(Verdict("prediction_mismatch", "warning", msg, r["stack"], r["layer"], r["name"],
                           {"quantity": key, "measured": r[key], "predicted": r["pred_" + key],
                            "disagreement": worst, "tolerance": tol, "n_beyond": n_bad}))
    return out


def judge(rows: list[dict], attention: list[dict]) -> list[Verdict]:
    """All verdicts for measured ``rows`` (see `deepscalelm.diagnostics.report`) and attention stats."""
    verdicts = _nonfinite(rows)
    stacks = list(dict.fromkeys(r["stack"] for r in rows))
    for stack in stacks:
        series = layer_series(rows, stack)
        verdicts += _variance(series, stack)
        verdicts += _gradients(series, stack)
        verdicts += _rank_collapse(series, stack)
    verdicts += _saturation(rows, attention)
    if not any(v.severity == "error" for v in verdicts):
        verdicts += prediction_mismatch(rows)
    return verdicts
