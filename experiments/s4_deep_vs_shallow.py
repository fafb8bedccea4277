"""Study 4: deep-thin vs shallow-wide decoders at equal non-embedding parameters, equal token budget.

Byte-level decoder LM on Tiny Shakespeare (train: first 90 %, validation: last 10 %), Pre-LN (and
Post-LN with --post), DSLM vs the standard GPT-2 initialisation (`gpt2`: N(0, 0.02^2), output
projections / sqrt(2N), no residual scaling). Shapes (layers x d_model, d_ff = 4 d, d_head 16) have
equal non-embedding parameters 12 N d^2: 4x128, 16x64, 64x32. Same schedule, batch and token budget
for every run; 2 seeds. Learning rate per scheme (--lrs scheme=lr; default: the largest rate of the
study-5 grid with which each scheme learned at 48 layers: dslm 1e-2, gpt2 3e-3). Reported: validation
loss (nats/byte) and bits per byte, train time per step, wall-clock. With --ptb the same on Penn
Treebank words (vocab 10k).

    PYTHONPATH=src python experiments/s4_deep_vs_shallow.py --quick   # 150 steps x 16 x 64 tokens
    PYTHONPATH=src python experiments/s4_deep_vs_shallow.py           # 2000 steps x 32 x 128, + Post-LN
"""

from __future__ import annotations

import argparse
import math

import numpy as np
from common import Log, ptb_words, same_token_prob, setup, shakespeare_bytes, train_lm


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--shapes", nargs="*", default=["4x128", "16x64", "64x32"])
    ap.add_argument("--schemes", nargs="*", default=["dslm", "gpt2"])
    ap.add_argument("--norms", nargs="*", default=None)
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1])
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--seq", type=int, default=None)
    ap.add_argument("--lrs", nargs="*", default=["dslm=1e-2", "gpt2=3e-3"], help="per-scheme peak lr, scheme=lr")
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--ptb", action="store_true", help="Penn Treebank words instead of Shakespeare bytes")
    ap.add_argument("--tag", default="", help="suffix of the log name, e.g. _post")
    a = ap.parse_args(argv)
    lrs = {k: float(v) for k, v in (x.split("=") for x in a.lrs)}
    steps = a.steps or (150 if a.quick else 2000)
    batch = a.batch or (16 if a.quick else 32)
    seq = a.seq or (64 if a.quick else 128)
    norms = a.norms or (["pre"] if a.quick else ["pre", "post"])
    setup()
    from deepscalelm import ModelConfig

    name = "s4_deep_vs_shallow" + ("_ptb" if a.ptb else "") + a.tag
    log = Log(name, a.quick, dict(vars(a), steps=steps, batch=batch, seq=seq, norms=norms))
    if a.ptb:
        tr, va, vocab = ptb_words()
    else:
        (tr, va), vocab = shakespeare_bytes(), 256
    p_same = same_token_prob(tr, vocab)
    log["tokens_per_run"] = steps * batch * seq
    runs = []
    for norm in norms:
        for shape in a.shapes:
            N, d = map(int, shape.split("x"))
            for scheme in a.schemes:
                for seed in a.seeds:
                    cfg = ModelConfig(arch="decoder", n_layers=N, d_model=d, n_heads=max(1, d // 16), seq_len=seq,
                                      vocab_size=vocab, norm=norm, scheme=scheme, dropout=a.dropout,
                                      attn_dropout=a.dropout, same_token_prob=p_same)
                    res = train_lm(cfg, tr, va, steps=steps, batch=batch, lr=lrs[scheme], seed=seed,
                                   warmup=max(5, steps // 10), eval_batches=16, eval_every=max(25, steps // 6))
                    row = {"norm": norm, "shape": shape, "n_layers": N, "d_model": d, "scheme": scheme, "seed": seed,
                           "lr": lrs[scheme],
                           "n_params": res["n_params"], "n_params_non_embedding": res["n_params_non_embedding"],
                           "val_loss": res["val_loss"], "val_bpb": res["val_loss"] / math.log(2),
                           "val_curve": res["val_curve"], "diverged": res["diverged"],
                           "train_loss_last10": float(np.mean(res["loss_curve"][-10:])),
                           "loss_curve": res["loss_curve"], "train_seconds": res["train_seconds"],
                           "seconds_per_step": res["seconds_per_step"]}
                    runs.append(row)
                    print(f"{norm} {shape:7s} {scheme:5s} seed {seed}: val {row['val_loss']:.4f} nats "
                          f"({row['val_bpb']:.3f} bpb), train(last10) {row['train_loss_last10']:.3f}, "
                          f"{res['n_params_non_embedding']} non-emb params, {res['seconds_per_step']*1e3:.0f} ms/step, "
                          f"{res['train_seconds']:.0f}s", flush=True)
                    log["runs"] = runs
                    log.save()
    summary = {}
    for r in runs:
        k = f"{r['norm']}/{r['shape']}/{r['scheme']}"
        summary.setdefault(k, []).append(r)
    log["summary"] = {k: {"val_loss_mean": float(np.mean([r["val_loss"] for r in v])),
                          "val_loss_seeds": [r["val_loss"] for r in v],
                          "val_bpb_mean": float(np.mean([r["val_bpb"] for r in v])),
                          "ms_per_step_mean": 1e3 * float(np.mean([r["seconds_per_step"] for r in v])),
                          "n_params_non_embedding": v[0]["n_params_non_embedding"], "n_params": v[0]["n_params"]}
                      for k, v in summary.items()}
    plot(log, runs)
    log.save()
    return 0


def plot(log, runs):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(12, 4.2))
    keys = sorted({(r["norm"], r["shape"], r["scheme"]) for r in runs},
                  key=lambda k: (k[0], k[2], int(k[1].split("x")[0])))
    for k in keys:
        rs = [r for r in runs if (r["norm"], r["shape"], r["scheme"]) == k]
        curve = np.mean([np.convolve(r["loss_curve"], np.ones(10) / 10, mode="valid") for r in rs], axis=0)
        ax[0].plot(curve, label=f"{k[0]}-LN {k[1]} {k[2]}", ls="-" if k[2] == "dslm" else "--")
    ax[0].set_xlabel("step")
    ax[0].set_ylabel("train loss (10-step mean, seed mean)")
    ax[0].legend(fontsize=7)
    for norm in sorted({r["norm"] for r in runs}):
        for scheme in sorted({r["scheme"] for r in runs}):
            rs = [r for r in runs if r["norm"] == norm and r["scheme"] == scheme]
            shapes = sorted({r["n_layers"] for r in rs})
            m = [np.mean([r["val_loss"] for r in rs if r["n_layers"] == n]) for n in shapes]
            ax[1].plot(shapes, m, "o-", label=f"{norm}-LN {scheme}")
            for r in rs:
                ax[1].plot(r["n_layers"], r["val_loss"], "k.", ms=3)
    ax[1].set_xscale("log")
    ax[1].set_xlabel("layers (equal non-embedding params)")
    ax[1].set_ylabel("validation loss (nats)")
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(log.fig("loss"), dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
