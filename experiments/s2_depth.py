"""Study 2: depth sweeps at initialisation, predicted (`deepscalelm.predict`) vs measured (`measure`).

Decoder, Tiny Shakespeare byte windows (validation split), train mode, dropout 0.1, paper protocol
(unit iid Gaussian gradient at the final hidden state). For each (norm, scheme) in
pre/xavier, post/xavier, pre/dslm, post/dslm and each depth N, one model is measured and predicted.
Per run: stream variance per layer (after the FFN merge), stream-gradient variance, and the claim
statistics:

* Pre-LN xavier: linear fit of var_n against n (R^2, slope measured vs predicted) -> Theta(N);
  hyperbolic gradients: grad_var_n * var_n ~ const, first/last gradient-variance ratio.
* Post-LN xavier: exp(slope) of log grad_var_n against n (geometric factor per layer), R^2.
* DSLM: stream variance range, gradient-variance max/min.

Also R^2 of log10(measured) against log10(predicted) variance and gradient variance, pooled.

    PYTHONPATH=src python experiments/s2_depth.py --quick      # d_model 32, N in 12, 48, 192, 1000
    PYTHONPATH=src python experiments/s2_depth.py              # d_model 64, batch 16, L 64, + N 384
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from common import Log, same_token_prob, setup, shakespeare_bytes, windows

RUNS = [("pre", "xavier"), ("post", "xavier"), ("pre", "dslm"), ("post", "dslm")]


def layer_series(traj, field):
    """Value of `field` after each layer's FFN merge, layers 1..N."""
    recs = [r for r in traj if r.block == "ffn"]
    return np.array([r.layer for r in recs]), np.array([getattr(r, field) for r in recs], dtype=float)


def linfit(x, y):
    a, b = np.polyfit(x, y, 1)
    yhat = a * x + b
    ss = ((y - y.mean()) ** 2).sum()
    r2 = 1 - ((y - yhat) ** 2).sum() / ss if ss > 0 else float("nan")
    return float(a), float(b), float(r2)


def r2_log(meas, pred):
    m, p = np.log10(np.asarray(meas)), np.log10(np.asarray(pred))
    ss = ((m - m.mean()) ** 2).sum()
    return float(1 - ((m - p) ** 2).sum() / ss) if ss > 0 else float("nan")


def stats(norm, scheme, lm, vm, gm, lp, vp, gp):
    s = {"var_first": vm[0], "var_last": vm[-1], "pred_var_first": vp[0], "pred_var_last": vp[-1],
         "var_min": vm.min(), "var_max": vm.max(), "pred_var_min": vp.min(), "pred_var_max": vp.max(),
         "gvar_first_over_last": gm[0] / gm[-1], "pred_gvar_first_over_last": gp[0] / gp[-1],
         "gvar_max_over_min": gm.max() / gm.min(), "pred_gvar_max_over_min": gp.max() / gp.min()}
    if norm == "pre" and scheme != "dslm":
        a, b, r2 = linfit(lm.astype(float), vm)
        ap, bp, r2p = linfit(lp.astype(float), vp)
        s.update(var_slope=a, var_fit_r2=r2, pred_var_slope=ap, pred_var_fit_r2=r2p)
        # hyperbolic: grad_var_n * var_n constant  <=>  grad_var_n proportional to 1/var_n ~ 1/n
        prod = gm * vm
        s.update(gvar_times_var_cv=float(prod.std() / prod.mean()),
                 gvar_vs_inv_var_r2=r2_log(gm / gm[-1], vm[-1] / vm))
    if scheme != "dslm" or True:
        a, _, r2 = linfit(lm.astype(float), np.log(gm))
        ap, _, _ = linfit(lp.astype(float), np.log(gp))
        s.update(gvar_factor_per_layer=math.exp(a), gvar_loglinear_r2=r2, pred_gvar_factor_per_layer=math.exp(ap))
    return s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--depths", type=int, nargs="*", default=None)
    ap.add_argument("--d-model", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--seq", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--replot", action="store_true", help="only redraw the figure from the JSON log")
    a = ap.parse_args(argv)
    if a.quick:
        depths, d, B, L = a.depths or [12, 48, 192, 1000], a.d_model or 32, a.batch or 8, a.seq or 32
    else:
        depths, d, B, L = a.depths or [12, 48, 192, 384, 1000], a.d_model or 64, a.batch or 16, a.seq or 64
    setup()
    import torch

    import deepscalelm
    from deepscalelm import ModelConfig

    log = Log("s2_depth", a.quick, dict(vars(a), depths=depths, d_model=d, batch=B, seq=L))
    if a.replot:
        import json

        old = json.loads(log.path().read_text())
        plot(log, old["runs"], old["args"]["depths"])
        return 0
    train, val = shakespeare_bytes()
    p_same = same_token_prob(train, 256)
    ids = windows(val, B, L, np.random.default_rng(a.seed))
    log["same_token_prob"] = p_same
    runs = []
    for N in depths:
        for norm, scheme in RUNS:
            cfg = ModelConfig(arch="decoder", n_layers=N, d_model=d, n_heads=max(1, d // 16), seq_len=L,
                              norm=norm, scheme=scheme, dropout=0.1, attn_dropout=0.1, same_token_prob=p_same)
            t = time.time()
            pred = deepscalelm.predict(cfg)
            torch.manual_seed(a.seed)
            model = deepscalelm.build_model(cfg).train()
            meas = deepscalelm.measure(model, ids, protocol="paper", seed=a.seed)
            del model
            secs = time.time() - t
            lm, vm = layer_series(meas, "var")
            _, gm = layer_series(meas, "grad_var")
            _, cm = layer_series(meas, "corr")
            lp, vp = layer_series(pred, "var")
            _, gp = layer_series(pred, "grad_var")
            _, cp = layer_series(pred, "corr")
            pairs = [(m, p) for m, p in meas.join(pred) if m.block in ("attn", "ffn")]
            st = stats(norm, scheme, lm, vm, gm, lp, vp, gp)
            st.update(r2_log_var=r2_log([m.var for m, _ in pairs], [p.var for _, p in pairs]),
                      r2_log_gvar=r2_log([m.grad_var for m, _ in pairs], [p.grad_var for _, p in pairs]),
                      median_abs_var_ratio_m1=float(np.median([abs(m.var / p.var - 1) for m, p in pairs])),
                      median_abs_gvar_ratio_m1=float(np.median([abs(m.grad_var / p.grad_var - 1) for m, p in pairs])),
                      median_abs_corr_diff=float(np.median([abs(m.corr - p.corr) for m, p in pairs])))
            run = {"N": N, "norm": norm, "scheme": scheme, "seconds": round(secs, 1), "stats": st,
                   "curves": {"layer": lm.tolist(), "var": vm.tolist(), "pred_var": vp.tolist(),
                              "grad_var": gm.tolist(), "pred_grad_var": gp.tolist(),
                              "corr": cm.tolist(), "pred_corr": cp.tolist()}}
            runs.append(run)
            print(f"N={N:5d} {norm:4s} {scheme:7s} {secs:6.1f}s  "
                  f"var {vm[0]:.3g}->{vm[-1]:.3g} (pred {vp[0]:.3g}->{vp[-1]:.3g})  "
                  f"gvar first/last {st['gvar_first_over_last']:.3g} (pred {st['pred_gvar_first_over_last']:.3g})  "
                  f"factor/layer {st['gvar_factor_per_layer']:.4f} (pred {st['pred_gvar_factor_per_layer']:.4f})  "
                  f"R2 log var {st['r2_log_var']:.3f} gvar {st['r2_log_gvar']:.3f}", flush=True)
            log["runs"] = runs
            log.save()
    # pooled R^2 over all runs (log10 measured vs predicted, per FFN merge)
    allm_v, allp_v, allm_g, allp_g = [], [], [], []
    for r in runs:
        c = r["curves"]
        allm_v += c["var"]
        allp_v += c["pred_var"]
        allm_g += c["grad_var"]
        allp_g += c["pred_grad_var"]
    log["pooled_r2_log10_var"] = r2_log(allm_v, allp_v)
    log["pooled_r2_log10_grad_var"] = r2_log(allm_g, allp_g)
    plot(log, runs, depths)
    log.save()
    return 0


def plot(log, runs, depths):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(17, 7.5))
    for j, (norm, scheme) in enumerate(RUNS):
        for r in runs:
            if r["norm"] != norm or r["scheme"] != scheme:
                continue
            c = r["curves"]
            x = np.array(c["layer"]) / r["N"]
            l, = axes[0, j].plot(x, c["var"], ".", ms=2, label=f"N={r['N']} measured")
            axes[0, j].plot(x, c["pred_var"], "-", color=l.get_color(), lw=1)
            axes[1, j].plot(x, c["grad_var"], ".", ms=2, color=l.get_color())
            axes[1, j].plot(x, c["pred_grad_var"], "-", color=l.get_color(), lw=1)
        axes[0, j].set_title(f"{norm}-LN {scheme}: stream variance")
        axes[1, j].set_title(f"{norm}-LN {scheme}: stream-gradient variance")
        axes[1, j].set_xlabel("layer / N")
        if scheme == "xavier" and norm == "pre":
            axes[0, j].set_yscale("log")
        else:
            axes[0, j].set_ylim(0, 2)
        axes[1, j].set_yscale("log")
        axes[0, j].legend(fontsize=7)
    fig.suptitle("dots: measured, lines: predicted (decoder, Tiny Shakespeare bytes, init, dropout 0.1)")
    fig.tight_layout()
    fig.savefig(log.fig("curves"), dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
