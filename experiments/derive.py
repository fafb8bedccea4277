"""Derived statistics and markdown tables from the JSON logs in experiments/results (no new runs).

    PYTHONPATH=src python experiments/derive.py [--quick]

Writes experiments/results/derived[_quick].json and prints the tables used in docs/results.md.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from common import RESULTS


def r2(meas, pred):
    m, p = np.log10(np.asarray(meas, float)), np.log10(np.asarray(pred, float))
    ss = ((m - m.mean()) ** 2).sum()
    return float(1 - ((m - p) ** 2).sum() / ss)


def load(name):
    p = RESULTS / f"{name}.json"
    return json.loads(p.read_text()) if p.is_file() else None


def s2(sfx, out):
    d = load("s2_depth" + sfx)
    if not d:
        return
    print("\n### s2: depth sweeps\n")
    print("| N | norm | scheme | stream var first -> last (pred) | grad var first/last (pred) "
          "| grad-var factor per layer (pred) | log-linear R^2 | extra |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for r in d["runs"]:
        s, c = r["stats"], r["curves"]
        extra = ""
        row = {"N": r["N"], "norm": r["norm"], "scheme": r["scheme"]}
        if r["norm"] == "pre" and r["scheme"] == "xavier":
            # hyperbolic: log gvar = -e log var + c ; e = 1 is pure hyperbolic (grad ~ 1/var ~ 1/n)
            e_m = -np.polyfit(np.log(c["var"]), np.log(c["grad_var"]), 1)[0]
            e_p = -np.polyfit(np.log(c["pred_var"]), np.log(c["pred_grad_var"]), 1)[0]
            row.update(var_slope=s["var_slope"], pred_var_slope=s["pred_var_slope"], var_fit_r2=s["var_fit_r2"],
                       gvar_power_of_var=e_m, pred_gvar_power_of_var=e_p)
            extra = (f"linear fit var_n: slope {s['var_slope']:.2f}/layer (pred {s['pred_var_slope']:.2f}), "
                     f"R^2 {s['var_fit_r2']:.3f}; "
                     f"grad_var ~ var^-{e_m:.2f} (pred ^-{e_p:.2f})")
        else:
            extra = (f"stream var range [{s['var_min']:.3f}, {s['var_max']:.3f}]; "
                     f"grad var max/min {s['gvar_max_over_min']:.3g} (pred {s['pred_gvar_max_over_min']:.3g})")
            row.update(var_min=s["var_min"], var_max=s["var_max"], gvar_max_over_min=s["gvar_max_over_min"],
                       pred_gvar_max_over_min=s["pred_gvar_max_over_min"])
        row.update(gvar_first_over_last=s["gvar_first_over_last"], pred=s["pred_gvar_first_over_last"],
                   factor=s["gvar_factor_per_layer"], pred_factor=s["pred_gvar_factor_per_layer"],
                   loglinear_r2=s["gvar_loglinear_r2"])
        rows.append(row)
        print(f"| {r['N']} | {r['norm']} | {r['scheme']} | {s['var_first']:.3g} -> {s['var_last']:.3g} "
              f"({s['pred_var_first']:.3g} -> {s['pred_var_last']:.3g}) "
              f"| {s['gvar_first_over_last']:.3g} ({s['pred_gvar_first_over_last']:.3g}) "
              f"| {s['gvar_factor_per_layer']:.4f} ({s['pred_gvar_factor_per_layer']:.4f}) "
              f"| {s['gvar_loglinear_r2']:.2f} | {extra} |")
    pooled = {}
    for label, sel in (("all runs", lambda r: True),
                       ("all but post/xavier", lambda r: not (r["norm"] == "post" and r["scheme"] == "xavier")),
                       ("pre/xavier", lambda r: r["norm"] == "pre" and r["scheme"] == "xavier")):
        rs = [r for r in d["runs"] if sel(r)]
        mv = sum((r["curves"]["var"] for r in rs), [])
        pv = sum((r["curves"]["pred_var"] for r in rs), [])
        mg = sum((r["curves"]["grad_var"] for r in rs), [])
        pg = sum((r["curves"]["pred_grad_var"] for r in rs), [])
        pooled[label] = {"r2_log10_var": r2(mv, pv), "r2_log10_grad_var": r2(mg, pg), "points": len(mv)}
    print("\npooled R^2 (log10 measured vs log10 predicted, per layer):")
    for k, v in pooled.items():
        print(f"  {k}: var {v['r2_log10_var']:.4f}, grad var {v['r2_log10_grad_var']:.4f} ({v['points']} points)")
    out["s2"] = {"rows": rows, "pooled": pooled}


def repredict(sfx, out):
    """Re-run `predict` (theory only, milliseconds) for the study-2 Post-LN configurations with the
    current code, to see whether later theory commits change the study-2 predictions."""
    import math
    import subprocess

    import deepscalelm
    from deepscalelm import ModelConfig

    d = load("s2_depth" + sfx)
    if not d:
        return
    a = d["args"]
    rows = []
    print("\nrepredicted Post-LN gradient profiles with the current theory code:")
    for r in d["runs"]:
        if r["norm"] != "post":
            continue
        cfg = ModelConfig(arch="decoder", n_layers=r["N"], d_model=a["d_model"], n_heads=max(1, a["d_model"] // 16),
                          seq_len=a["seq"], norm="post", scheme=r["scheme"], dropout=0.1, attn_dropout=0.1,
                          same_token_prob=d["same_token_prob"])
        g = np.array([x.grad_var for x in deepscalelm.predict(cfg) if x.block == "ffn"])
        old = np.array(r["curves"]["pred_grad_var"])
        row = {"N": r["N"], "scheme": r["scheme"], "now_first_over_last": float(g[0] / g[-1]),
               "now_factor_per_layer": math.exp(np.polyfit(np.arange(len(g)), np.log(g), 1)[0]),
               "now_max_over_min": float(g.max() / g.min()),
               "at_run_first_over_last": float(old[0] / old[-1]),
               "measured_first_over_last": r["stats"]["gvar_first_over_last"]}
        rows.append(row)
        print(f"  N={r['N']} post {r['scheme']}: first/last now {row['now_first_over_last']:.3g} "
              f"(at run time {row['at_run_first_over_last']:.3g}, measured {row['measured_first_over_last']:.3g}), "
              f"factor/layer now {row['now_factor_per_layer']:.4f}, max/min now {row['now_max_over_min']:.3g}")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    out["s2_repredicted_post_ln"] = {"git_head": head, "rows": rows}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repredict", action="store_true", help="also re-run predict() for the study-2 Post-LN runs")
    a = ap.parse_args(argv)
    sfx = "_quick" if a.quick else ""
    out = {}
    s2(sfx, out)
    if a.repredict:
        repredict(sfx, out)
    (RESULTS / f"derived{sfx}.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
