"""Study 5: largest stable learning rate per initialisation scheme at depth.

Decoder on Tiny Shakespeare bytes, tiny width; for each scheme (dslm, normal, gpt2, xavier with
Pre-LN; deepnet and dslm with Post-LN) and each learning rate of a small grid, a short AdamW run
(warm-up 5 steps, cosine decay, grad clip 1.0, fp32, no dropout). Two verdicts per run:

* "learns": every loss finite and the validation loss at least 0.1 nats below the unigram
  cross-entropy of the validation bytes (3.347 nats with training-set byte frequencies), i.e. the
  model uses context. (A first pass with 40 steps showed that every scheme and learning rate reaches
  the unigram plateau, ~3.32-3.36 nats, and none goes beyond it, so "loss went down" alone separates
  nothing.)
* "diverges": a non-finite loss or gradient, or the mean training loss of the last 10 steps above the
  mean of the first 5.

Reported: the largest grid learning rate that learns, per scheme and depth.

    PYTHONPATH=src python experiments/s5_stability.py --quick     # depth 48, d 32, 40 steps
    PYTHONPATH=src python experiments/s5_stability.py             # depths 48 and 192, 60 steps
"""

from __future__ import annotations

import argparse

import numpy as np
from common import Log, same_token_prob, setup, shakespeare_bytes, train_lm

SCHEMES = [("pre", "dslm"), ("pre", "normal"), ("pre", "gpt2"), ("pre", "xavier"), ("post", "deepnet"),
           ("post", "dslm")]


def unigram_ce(tr, va):
    q = np.bincount(tr, minlength=256) / len(tr)
    p = np.bincount(va, minlength=256) / len(va)
    m = p > 0
    return float(-(p[m] * np.log(np.maximum(q[m], 1e-12))).sum())


def learns(curve, val, unigram, margin=0.1):
    c = np.asarray(curve, dtype=float)
    return bool(np.all(np.isfinite(c)) and np.isfinite(val) and val < unigram - margin)


def diverges(curve):
    c = np.asarray(curve, dtype=float)
    return bool(not np.all(np.isfinite(c)) or c[-10:].mean() > c[:5].mean())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--depths", type=int, nargs="*", default=None)
    ap.add_argument("--lrs", type=float, nargs="*", default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--d-model", type=int, default=32)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--schemes", nargs="*", default=None,
                    help="subset of norm/scheme pairs, e.g. pre/dslm post/deepnet (default: all six)")
    ap.add_argument("--tag", default="", help="suffix of the log name, e.g. _N192")
    a = ap.parse_args(argv)
    depths = a.depths or ([48] if a.quick else [48, 192])
    steps = a.steps or (100 if a.quick else 300)
    a.lrs = a.lrs or ([3e-3, 1e-2, 3e-2, 1e-1] if a.quick else [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1])
    setup()
    from deepscalelm import ModelConfig

    schemes = [tuple(x.split("/")) for x in a.schemes] if a.schemes else SCHEMES
    log = Log("s5_stability" + a.tag, a.quick, dict(vars(a), depths=depths, steps=steps))
    tr, va = shakespeare_bytes()
    p_same = same_token_prob(tr, 256)
    uni = unigram_ce(tr, va)
    log["unigram_val_ce"] = uni
    runs, best = [], {}
    for N in depths:
        for norm, scheme in schemes:
            key = f"{norm}/{scheme}/N{N}"
            best[key] = None
            for lr in a.lrs:
                cfg = ModelConfig(arch="decoder", n_layers=N, d_model=a.d_model, n_heads=2, seq_len=a.seq,
                                  norm=norm, scheme=scheme, dropout=0.0, attn_dropout=0.0, same_token_prob=p_same)
                res = train_lm(cfg, tr, va, steps=steps, batch=a.batch, lr=lr, seed=a.seed, warmup=5,
                               eval_batches=4)
                c = res["loss_curve"]
                ok = learns(c, res["val_loss"], uni)
                div = diverges(c)
                runs.append({"N": N, "norm": norm, "scheme": scheme, "lr": lr, "learns": ok, "diverges": div,
                             "diverged_nonfinite": res["diverged"], "first5": float(np.mean(c[:5])),
                             "last5": float(np.mean(c[-5:])), "last10": float(np.mean(c[-10:])),
                             "max_loss": float(np.nanmax(c)),
                             "val_loss": res["val_loss"], "loss_curve": c,
                             "seconds": round(res["train_seconds"], 2)})
                if ok:
                    best[key] = lr
                print(f"N={N} {norm:4s} {scheme:7s} lr={lr:g}: {'learns ' if ok else 'plateau'}"
                      f"{' DIVERGES' if div else ''} first5 {np.mean(c[:5]):.3f} last5 {np.mean(c[-5:]):.3f} "
                      f"max {np.nanmax(c):.3f} val {res['val_loss']:.3f} "
                      f"({res['train_seconds']:.1f}s)", flush=True)
                log["runs"] = runs
                log["largest_lr_that_learns"] = best
                log.save()
    plot(log, runs, depths, a.lrs, schemes)
    log.save()
    return 0


def plot(log, runs, depths, lrs, schemes=SCHEMES):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(depths), figsize=(6 * len(depths), 4.2), squeeze=False)
    for j, N in enumerate(depths):
        ax = axes[0, j]
        for norm, scheme in schemes:
            rs = [r for r in runs if r["N"] == N and r["norm"] == norm and r["scheme"] == scheme]
            ax.plot([r["lr"] for r in rs], [r["val_loss"] if np.isfinite(r["val_loss"]) else np.nan for r in rs], "o-",
                    label=f"{norm}-LN {scheme}")
        ax.axhline(log["unigram_val_ce"], color="k", ls=":", lw=0.8, label="unigram cross-entropy")
        ax.set_xscale("log")
        ax.set_xlabel("peak learning rate")
        ax.set_ylabel("validation loss (nats/byte)")
        ax.set_title(f"N={N} layers, d_model {log['args']['d_model']}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(log.fig("lr_grid"), dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
