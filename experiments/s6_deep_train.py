"""Study 6: train a very deep Pre-LN DSLM decoder on Tiny Shakespeare bytes for a fixed small budget.

Records the loss curve, whether any loss/gradient is non-finite, validation loss, and the per-layer
moments (`deepscalelm.measure`, paper protocol, train mode) at the start and at the end of training
next to the prediction at initialisation.

    PYTHONPATH=src python experiments/s6_deep_train.py --quick     # 1000 layers, d 32, 40 steps x 8 x 32, lr 1e-2
    PYTHONPATH=src python experiments/s6_deep_train.py             # 1000 layers, d 64, 300 steps x 16 x 64
"""

from __future__ import annotations

import argparse
import math

import numpy as np
from common import Log, same_token_prob, setup, shakespeare_bytes, train_lm, windows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--layers", type=int, default=1000)
    ap.add_argument("--d-model", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--seq", type=int, default=None)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--scheme", default="dslm")
    ap.add_argument("--norm", default="pre")
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="", help="suffix of the log name, e.g. _lr1e-3")
    ap.add_argument("--replot", action="store_true", help="only redraw the figure from the JSON log")
    a = ap.parse_args(argv)
    d = a.d_model or (32 if a.quick else 64)
    steps = a.steps or (40 if a.quick else 300)
    batch = a.batch or (8 if a.quick else 16)
    seq = a.seq or (32 if a.quick else 64)
    setup()
    import deepscalelm
    from deepscalelm import ModelConfig

    log = Log("s6_deep_train" + a.tag, a.quick, dict(vars(a), d_model=d, steps=steps, batch=batch, seq=seq))
    if a.replot:
        import json

        old = json.loads(log.path().read_text())
        log["result"], log.data["args"] = old["result"], old["args"]
        plot(log, old["args"]["layers"])
        return 0
    tr, va = shakespeare_bytes()
    p_same = same_token_prob(tr, 256)
    cfg = ModelConfig(arch="decoder", n_layers=a.layers, d_model=d, n_heads=max(1, d // 16), seq_len=seq,
                      norm=a.norm, scheme=a.scheme, dropout=a.dropout, attn_dropout=a.dropout, same_token_prob=p_same)
    mb = windows(va, batch, seq, np.random.default_rng(7))
    res = train_lm(cfg, tr, va, steps=steps, batch=batch, lr=a.lr, seed=a.seed, warmup=max(3, steps // 10),
                   eval_batches=4, measure_at=(0, steps), measure_batch=mb)
    pred = deepscalelm.predict(cfg)
    pv = {(r.layer, r.block): r for r in pred}
    c = res["loss_curve"]
    mom = {}
    for k, rows in res["moments"].items():
        ffn = [r for r in rows if r["block"] == "ffn"]
        v = np.array([r["var"] for r in ffn])
        g = np.array([r["grad_var"] for r in ffn])
        mom[str(k)] = {"layer": [r["layer"] for r in ffn], "var": v.tolist(), "grad_var": g.tolist(),
                       "corr": [r["corr"] for r in ffn], "var_min": v.min(), "var_max": v.max(),
                       "gvar_max_over_min": g.max() / g.min(), "gvar_first_over_last": g[0] / g[-1]}
    log["result"] = {"n_params": res["n_params"], "diverged": res["diverged"], "loss_curve": c,
                     "loss_first5": float(np.mean(c[:5])), "loss_last5": float(np.mean(c[-5:])),
                     "val_loss": res["val_loss"], "val_bpb": res["val_loss"] / math.log(2),
                     "all_finite": bool(np.all(np.isfinite(c))), "seconds_per_step": res["seconds_per_step"],
                     "train_seconds": res["train_seconds"], "tokens": steps * batch * seq, "moments": mom,
                     "pred_var": [pv[(l, "ffn")].var for l in range(1, a.layers + 1)],
                     "pred_grad_var": [pv[(l, "ffn")].grad_var for l in range(1, a.layers + 1)]}
    for k, m in mom.items():
        print(f"step {k}: stream var [{m['var_min']:.3f}, {m['var_max']:.3f}], "
              f"grad var max/min {m['gvar_max_over_min']:.3f}, "
              f"first/last {m['gvar_first_over_last']:.3f}")
    print(f"loss {np.mean(c[:5]):.3f} -> {np.mean(c[-5:]):.3f}, val {res['val_loss']:.3f}, diverged {res['diverged']}, "
          f"{res['seconds_per_step']:.2f} s/step, {res['n_params']} params")
    plot(log, a.layers)
    log.save()
    return 0


def plot(log, N):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = log["result"]
    fig, ax = plt.subplots(1, 3, figsize=(16, 4.2))
    ax[0].plot(r["loss_curve"])
    ax[0].set_xlabel("step")
    ax[0].set_ylabel("train loss (nats/byte)")
    ax[0].set_title(f"{N}-layer {log['args']['norm']}-LN {log['args']['scheme']} decoder, "
                    f"d_model {log['args']['d_model']}, lr {log['args']['lr']:g}")
    for k, m in r["moments"].items():
        ax[1].plot(m["layer"], m["var"], ".", ms=2, label=f"measured, step {k}")
        ax[2].plot(m["layer"], m["grad_var"], ".", ms=2, label=f"measured, step {k}")
    ax[1].plot(range(1, N + 1), r["pred_var"], "k-", lw=1, label="predicted at init")
    ax[2].plot(range(1, N + 1), r["pred_grad_var"], "k-", lw=1, label="predicted at init")
    ax[1].set_xlabel("layer")
    ax[1].set_ylabel("stream variance")
    ax[1].set_yscale("log")
    ax[1].legend(fontsize=7)
    ax[2].set_xlabel("layer")
    ax[2].set_ylabel("stream-gradient variance (paper protocol)")
    ax[2].set_yscale("log")
    ax[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(log.fig("train"), dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
