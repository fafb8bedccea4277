"""`CheckReport`: measured (and predicted) per-layer statistics, verdicts, and their outputs.

Row fields (one row per stream point, forward order):

* ``index`` (0-based position), ``name`` (module name), ``stack``, ``layer``, ``block``;
* ``mean``, ``var``, ``corr``: forward moments of the stream (the paper's component-check protocol), ``finite``;
* ``grad_var``, ``grad_corr``: moments of d(loss)/d(stream), ``grad_finite``;
* ``logit_max`` (largest attention logit over heads), ``logit_var`` (largest per-head logit
  variance), ``entropy`` (smallest per-head mean softmax entropy, nats), ``entropy_norm`` (its
  fraction of ln(visible keys)) of the attention module(s) inside this point (None when none);
* ``pred_var``, ``pred_corr``, ``pred_grad_var``, ``pred_grad_corr``: `deepscalelm.predict` at the
  same (stack, layer, block) when a config is known (None otherwise).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .verdicts import Verdict

__all__ = ["CheckReport", "ROW_FIELDS"]

ROW_FIELDS = ("index", "name", "stack", "layer", "block", "mean", "var", "corr", "finite", "grad_var",
              "grad_corr", "grad_finite", "logit_max", "logit_var", "entropy", "entropy_norm",
              "pred_var", "pred_corr", "pred_grad_var", "pred_grad_corr")


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _num(v: Any, spec: str) -> str:
    """``v`` formatted with ``spec``; "" for None; no "-0.000" for values that round to zero."""
    if v is None:
        return ""
    if not math.isfinite(v):
        return str(v)
    text = format(v, spec)
    if text.strip().startswith("-") and "e" not in text and float(text) == 0.0:
        text = format(0.0, spec)
    return text


@dataclass
class CheckReport:
    """Result of `deepscalelm.diagnostics.check`.

    ``rows``: per stream point (see module docstring); ``attention``: per attention module,
    per-head lists ``logit_max``, ``logit_var``, ``entropy``, ``entropy_norm`` plus ``name``, ``stack``,
    ``layer``; ``weights``: per parameter ``name``, ``shape``, ``grad_norm`` (Frobenius norm of
    d(loss)/dW), ``weight_norm``; ``verdicts``; ``meta``: protocol, batch shape, preset, loss...
    """

    rows: list[dict[str, Any]]
    attention: list[dict[str, Any]]
    weights: list[dict[str, Any]]
    verdicts: list[Verdict]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no verdict fired."""
        return not self.verdicts

    def verdict_kinds(self) -> list[str]:
        return [v.kind for v in self.verdicts]

    def column(self, name: str) -> list[Any]:
        if name not in ROW_FIELDS:
            raise ValueError(f"unknown row field {name!r}; fields: {', '.join(ROW_FIELDS)}")
        return [r[name] for r in self.rows]

    # ---------------------------------------------------------------------------------- outputs
    def table(self, every: int = 0) -> str:
        """Fixed-width table, measured beside predicted (``pred`` columns empty without a config).

        Keeps the embedding, every K-th layer with all its stream points (default: K such that about
        15 layers are shown), the first and last layer."""
        layers = sorted({r["layer"] for r in self.rows})
        if every <= 0:
            every = max(1, math.ceil(max(layers, default=0) / 15))
        last = layers[-1] if layers else 0
        keep = [r for r in self.rows if r["layer"] % every == 0 or r["layer"] in (1, last)]
        head = (f"{'stack':<8}{'layer':>5} {'block':<11}{'var':>10}{'pred':>10}{'corr':>8}{'pred':>8}"
                f"{'grad_var':>11}{'pred':>11}{'logit_var':>10}{'entropy':>8}")
        lines = [head, "-" * len(head)]
        for r in keep:
            lines.append(f"{r['stack'] or '-':<8}{r['layer']:>5} {r['block']:<11}{_num(r['var'], '10.4g')}"
                         f"{_num(r['pred_var'], '10.4g'):>10}{_num(r['corr'], '8.3f'):>8}"
                         f"{_num(r['pred_corr'], '8.3f'):>8}"
                         f"{_num(r['grad_var'], '11.4g'):>11}{_num(r['pred_grad_var'], '11.4g'):>11}"
                         f"{_num(r['logit_var'], '10.3g'):>10}{_num(r['entropy'], '8.3f'):>8}")
        if len(keep) < len(self.rows):
            lines.append(f"({len(self.rows) - len(keep)} of {len(self.rows)} rows hidden; --every 1 shows all, "
                         "--csv/--json write all)")
        return "\n".join(lines)

    def summary(self) -> str:
        """The verdicts in plain words (one per line), or a line saying none fired."""
        if not self.verdicts:
            agree = ""
            if self.meta.get("predicted"):
                from .verdicts import PRED_CORR_DIFF, PRED_VAR_FACTOR

                agree = (f"; measured and predicted agree within ×{PRED_VAR_FACTOR:g} (variances) and "
                         f"{PRED_CORR_DIFF:g} (correlation)")
            return f"no problems found{agree} (thresholds: docs/diagnostics.md)"
        return "\n".join(f"[{v.severity}] {v.message}" for v in self.verdicts)

    def __str__(self) -> str:
        return self.table() + "\n\n" + self.summary()

    def to_dict(self) -> dict[str, Any]:
        return {"meta": _clean(self.meta), "rows": [_clean(r) for r in self.rows],
                "attention": [_clean(a) for a in self.attention], "weights": [_clean(w) for w in self.weights],
                "verdicts": [v.to_dict() for v in self.verdicts]}

    def to_json(self, path: str | Path | None = None) -> str:
        """JSON ``{meta, rows, attention, weights, verdicts}`` (NaN/inf written as strings)."""
        text = json.dumps(self.to_dict(), indent=1, default=str)
        if path is not None:
            _write(Path(path), text)
        return text

    def to_csv(self, path: str | Path | None = None) -> str:
        """CSV of the rows (header `ROW_FIELDS`; empty cells for None)."""
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(ROW_FIELDS), lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: ("" if r[k] is None else r[k]) for k in ROW_FIELDS})
        text = buf.getvalue()
        if path is not None:
            _write(Path(path), text)
        return text

    def default_title(self) -> str:
        """A plot title from ``meta``: the model (arch, norm, scheme, depth, width when a config is
        known), the protocol and the preset."""
        m = self.meta
        cfg = m.get("config")
        what = m.get("model", "model")
        if isinstance(cfg, dict):
            what = (f"{cfg['arch']}, {cfg['norm']}-LN, scheme={cfg['scheme']}, {cfg['n_layers']} layers, "
                    f"d_model={cfg['d_model']}")
        return f"dslm check: {what} ({m.get('protocol', '?')} protocol, preset {m.get('preset', '?')})"

    def _keys(self) -> list[tuple[str, int, str]]:
        return [(r["stack"], r["layer"], r["block"]) for r in self.rows]

    def layer_axis(self) -> tuple[list[float], list[tuple[float, str]]]:
        """x position of every row in layers, and (x, stack) where each later stack starts (see
        `deepscalelm.plotting.layer_positions`: layer l's points in (l - 1, l], embedding at 0,
        final norm at N + 0.5)."""
        from ..plotting import layer_positions

        return layer_positions(self._keys())

    def plot(self, path: str | Path, title: str | None = None) -> Path:
        """PNG with four panels against the layer: forward variance, token correlation, gradient
        variance (measured solid, predicted dashed) and attention-logit variance / max. ``title``
        defaults to `default_title`."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from ..plotting import layer_axis_label

        xs, starts = self.layer_axis()
        xlabel = layer_axis_label(self._keys())
        fig, axes = plt.subplots(1, 4, figsize=(19, 4.1))
        for ax, (key, desc) in zip(axes[:3], (("var", "forward variance"), ("corr", "token correlation"),
                                              ("grad_var", "gradient variance")), strict=True):
            meas = [float(r[key]) for r in self.rows]
            ax.plot(*self._broken(xs, meas), "-", lw=1.4, label="measured")
            pred = [r["pred_" + key] for r in self.rows]
            if any(p is not None for p in pred):
                ax.plot(*self._broken(xs, [math.nan if p is None else float(p) for p in pred]), "--", lw=1.4,
                        label="predicted")
            pos = [v for v in meas + [p for p in pred if p is not None] if math.isfinite(v) and v > 0]
            if key != "corr" and pos and max(pos) > 20 * min(pos):
                ax.set_yscale("log")
            self._decorate(ax, desc, xlabel, starts)
            ax.legend(fontsize=8)
        ax = axes[3]
        ax_pts = [(x, r["logit_var"], r["logit_max"]) for x, r in zip(xs, self.rows, strict=True)
                  if r["logit_var"] is not None]
        if ax_pts:
            ax.plot([p[0] for p in ax_pts], [p[1] for p in ax_pts], "o-", ms=2, lw=1.2,
                    label="logit variance (worst head)")
            ax.plot([p[0] for p in ax_pts], [p[2] for p in ax_pts], "s-", ms=2, lw=1.2, label="max logit")
            from .verdicts import SATURATION_LOGIT_VAR

            ax.axhline(SATURATION_LOGIT_VAR, color="grey", ls=":", lw=1, label="saturation threshold")
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no attention modules hooked", ha="center", va="center", transform=ax.transAxes)
        self._decorate(ax, "attention logits", xlabel, starts)
        fig.suptitle(title or self.default_title(), fontsize=11)
        fig.tight_layout()
        from ..plotting import save_figure

        return save_figure(fig, path, dpi=100)

    def _broken(self, xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
        from ..plotting import broken_at_stacks

        return broken_at_stacks(self._keys(), xs, ys)

    @staticmethod
    def _decorate(ax: Any, desc: str, xlabel: str, starts: list[tuple[float, str]]) -> None:
        ax.set_title(desc, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        from ..plotting import mark_stacks

        mark_stacks(ax, starts)
