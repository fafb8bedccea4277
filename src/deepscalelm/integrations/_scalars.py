"""The scalars of a `deepscalelm.diagnostics.Telemetry` record, for metrics loggers (no extra imports)."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["record_scalars"]


def record_scalars(record: dict[str, Any], prefix: str = "dslm/", per_layer: bool = True) -> dict[str, float]:
    """The finite scalars of a `Telemetry` record for a metrics logger, named under ``prefix``.

    ``var/<module>``, ``corr/<module>``, ``grad_var/<module>`` per stream point (when ``per_layer``;
    variances in the model's own units, correlations in [-1, 1]); ``var_spread``: the largest over
    the smallest stream variance after the layers or sublayers, embedding and final norm left out
    (1 = flat profile); ``verdicts``: how many
    verdicts fired (their messages are in the record).
    """
    out: dict[str, float] = {}
    layer_vars = []
    for r in record["rows"]:
        for key in ("var", "corr", "grad_var"):
            v = r.get(key)
            if per_layer and v is not None and math.isfinite(v):
                out[f"{prefix}{key}/{r['name']}"] = float(v)
        v = r.get("var")
        if r.get("block") not in ("embedding", "final_norm") and v is not None and math.isfinite(v) and v > 0:
            layer_vars.append(v)
    if layer_vars:
        out[f"{prefix}var_spread"] = max(layer_vars) / min(layer_vars)
    out[f"{prefix}verdicts"] = float(len(record["verdicts"]))
    return out
