"""Signal propagation through 1000-layer decoders: DSLM against vanilla initialisation.

Each model (d_model 64, 4 heads, L 64, train mode, dropout 0.1, Tiny Shakespeare bytes) is measured
with the paper protocol (unit iid Gaussian gradient at the final hidden state) next to
`deepscalelm.predict`. Reported, over the residual-stream points after every merge:

* DSLM Pre-LN / Post-LN: min and max of the forward stream variance; max/min of the stream-gradient
  variance (measured and predicted);
* vanilla Pre-LN (``--vanilla`` scheme, default xavier): stream variance growth var(last)/var(first);
* Post-LN xavier: geometric per-layer change of the gradient variance, exp of the least-squares slope
  of log grad_var against the layer index (per layer = two merges).

A PNG with the per-merge curves is written to ``--png``.

    PYTHONPATH=src python benchmarks/depth_1000.py [--depth 1000 --batch 16 --png runs/depth_1000.png]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from agreement import same_token_prob, shakespeare_batch  # noqa: E402  (same folder)

import deepscalelm
from deepscalelm import ModelConfig
from deepscalelm.models import build_model


def stream(traj) -> list:
    """Records of the residual stream after every merge (attention and FFN), in order."""
    return [r for r in traj if r.block in ("attn", "cross_attn", "ffn")]


def per_layer_factor(recs) -> float:
    """exp(slope) of log(grad_var) against layer index, least squares over the merges."""
    x = np.array([r.layer for r in recs], dtype=float)
    y = np.log(np.array([r.grad_var for r in recs]))
    return float(math.exp(np.polyfit(x, y, 1)[0]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--vanilla", default="xavier", choices=["xavier", "normal"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--png", default="runs/depth_1000.png")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ids = shakespeare_batch(args.batch, args.seq, seed=1)
    p_same = same_token_prob(ids)
    runs = [("pre", "dslm"), ("post", "dslm"), ("pre", args.vanilla), ("post", "xavier")]
    results = {}
    print(f"decoder, {args.depth} layers, d_model 64, batch {args.batch}x{args.seq} Shakespeare bytes "
          f"(same_token_prob {p_same:.4f}), train mode, dropout 0.1")
    for norm, scheme in runs:
        t0 = time.time()
        cfg = ModelConfig(arch="decoder", norm=norm, scheme=scheme, n_layers=args.depth, d_model=64, n_heads=4,
                          seq_len=args.seq, vocab_size=256, dropout=0.1, attn_dropout=0.1, same_token_prob=p_same)
        torch.manual_seed(0)
        model = build_model(cfg).train()
        meas = stream(deepscalelm.measure(model, ids, seed=2))
        pred = stream(deepscalelm.predict(cfg))
        del model
        mv, pv = [r.var for r in meas], [r.var for r in pred]
        mg, pg = [r.grad_var for r in meas], [r.grad_var for r in pred]
        res = {"var_min": min(mv), "var_max": max(mv), "pred_var_min": min(pv), "pred_var_max": max(pv),
               "gvar_max_over_min": max(mg) / min(mg), "pred_gvar_max_over_min": max(pg) / min(pg),
               "var_growth": mv[-1] / mv[0], "pred_var_growth": pv[-1] / pv[0],
               "gvar_factor_per_layer": per_layer_factor(meas), "pred_gvar_factor_per_layer": per_layer_factor(pred),
               "gvar_first_over_last": mg[0] / mg[-1], "pred_gvar_first_over_last": pg[0] / pg[-1],
               "curves": {"var": mv, "pred_var": pv, "gvar": mg, "pred_gvar": pg}}
        results[f"{norm}/{scheme}"] = res
        print(f"{norm:4s} {scheme:7s} ({time.time() - t0:5.1f} s)  "
              f"stream var [{res['var_min']:.4g}, {res['var_max']:.4g}] "
              f"(pred [{res['pred_var_min']:.4g}, {res['pred_var_max']:.4g}])  var last/first {res['var_growth']:.4g} "
              f"(pred {res['pred_var_growth']:.4g})  grad var max/min {res['gvar_max_over_min']:.4g} "
              f"(pred {res['pred_gvar_max_over_min']:.4g})  grad var first/last {res['gvar_first_over_last']:.4g} "
              f"(pred {res['pred_gvar_first_over_last']:.4g})  per-layer grad-var factor "
              f"{res['gvar_factor_per_layer']:.5f} (pred {res['pred_gvar_factor_per_layer']:.5f})", flush=True)
    png = Path(args.png)
    png.parent.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(runs), figsize=(4.2 * len(runs), 7), sharex=True)
    for j, (key, res) in enumerate(results.items()):
        c = res["curves"]
        x = np.arange(len(c["var"])) / 2 + 0.5
        for i, (m, p, lab) in enumerate([("var", "pred_var", "stream variance"),
                                         ("gvar", "pred_gvar", "stream-gradient variance")]):
            ax = axes[i, j]
            ax.plot(x, c[m], lw=1, label="measured")
            ax.plot(x, c[p], lw=1, ls="--", label="predicted")
            ax.set_yscale("log")
            ax.set_title(f"{key}: {lab}", fontsize=9)
            ax.set_xlabel("layer")
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    out = png.with_suffix(".json")
    out.write_text(json.dumps({k: {kk: vv for kk, vv in v.items()} for k, v in results.items()}))
    print(f"figure written to {png}, numbers to {out}")


if __name__ == "__main__":
    main()
