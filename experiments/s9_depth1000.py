"""Study 9: a 1000-layer Pre-LN DSLM decoder trained with the depth-aware parametrisation.

Trains with the package's own loop (`deepscalelm.train.loop.train`, the loop of `dslm train`) on the
Tiny Shakespeare bytes shipped with the package, with ``parametrization="dslm"`` (block learning rates
divided by the stack's effective depth relative to a 2-layer model, `deepscalelm.optim`), at the
learning rate that was best for 2 layers in the transfer sweep. Every ``--every`` steps it measures the
per-layer moments on a fixed validation batch (`deepscalelm.measure`, paper protocol): the largest
stream variance, the token correlation at the last layer, and the share of the stream variance each
block adds (beta^2 * block variance / stream variance), and logs the validation loss against the
unigram plateau (the cross-entropy of the training bytes' unigram distribution).

    PYTHONPATH=src python experiments/s9_depth1000.py --quick   # 1000 layers, d 32, 500 steps x 8 x 32
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from common import Log, setup, shakespeare_bytes

from deepscalelm import ModelConfig, measure
from deepscalelm.models import build_model
from deepscalelm.train import TrainConfig
from deepscalelm.train.loop import train


def unigram_nats(ids: np.ndarray) -> float:
    """Cross-entropy (nats/byte) of the unigram distribution of ``ids`` on itself."""
    p = np.bincount(ids, minlength=256).astype(np.float64)
    p = p[p > 0] / p.sum()
    return float(-(p * np.log(p)).sum())


def moment_summary(model: torch.nn.Module, batch: torch.Tensor) -> dict[str, float]:
    """Largest stream variance, last-layer token correlation and the blocks' share of the stream."""
    was = model.training
    model.eval()
    traj = measure(model, batch, "paper")
    model.train(was)
    var, corr = traj.column("var"), traj.column("corr")
    blocks = [m for m in model.modules() if isinstance(getattr(m, "beta", None), float)]
    merged = [r for r in traj if r.block_var is not None]  # one record per residual block, after its merge
    shares = [b.beta ** 2 * r.block_var / max(r.var, 1e-30) for b, r in zip(blocks, merged, strict=True)]
    return {"max_var": float(max(var)), "final_var": float(var[-1]), "final_corr": float(corr[-1]),
            "max_corr": float(max(corr[1:])), "grad_var_ratio": float(max(traj.column("grad_var"))
                                                                         / min(traj.column("grad_var"))),
            "share_min": float(min(shares)), "share_max": float(max(shares))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--layers", type=int, default=1000)
    ap.add_argument("--d-model", type=int, default=32)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-2, help="reference (2-layer) learning rate")
    ap.add_argument("--parametrization", default="dslm", choices=["standard", "dslm"])
    ap.add_argument("--every", type=int, default=50, help="steps between moment measurements")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="")
    ap.add_argument("--work", default="runs/s9", help="run directory (checkpoints)")
    a = ap.parse_args(argv)
    setup(1)
    log = Log("s9_depth1000" + a.tag, a.quick, vars(a))
    mcfg = ModelConfig(n_layers=a.layers, d_model=a.d_model, n_heads=2, seq_len=a.seq, dropout=0.0,
                       attn_dropout=0.0, scheme="dslm")
    tcfg = TrainConfig(batch_size=a.batch, max_steps=a.steps, lr=a.lr, warmup_steps=max(1, a.steps // 10),
                       parametrization=a.parametrization, eval_interval=a.every, eval_batches=16,
                       ckpt_interval=a.steps, keep_checkpoints=1, sample_tokens=0, seed=a.seed, threads=1)
    train_ids, val_ids = shakespeare_bytes()
    plateau = unigram_nats(train_ids)
    g = np.random.default_rng(1)
    starts = g.integers(0, len(val_ids) - a.seq, 4)
    probe = torch.from_numpy(np.stack([val_ids[s:s + a.seq] for s in starts])).long()
    holder: dict[str, torch.nn.Module] = {}

    def factory(cfg: ModelConfig) -> torch.nn.Module:
        holder["model"] = build_model(cfg)
        return holder["model"]

    rows: list[dict] = []
    losses: list[float] = []
    t0 = time.process_time()

    def on_step(step: int, rec: dict) -> None:
        losses.append(float(rec["loss"]))
        if step == 1 or step % a.every == 0:
            m = moment_summary(holder["model"], probe)
            rows.append({"step": step, "train_loss": float(np.mean(losses[-a.every:])), **m})
            print(f"step {step:4d}: train {rows[-1]['train_loss']:.3f}  max var {m['max_var']:.3g}  "
                  f"last corr {m['final_corr']:.3f}  share [{m['share_min']:.2e}, {m['share_max']:.2e}]", flush=True)

    init = moment_summary(build_model(mcfg), probe)
    res = train(f"{a.work}{a.tag}", mcfg, tcfg, factory=factory, progress=False, callbacks=[on_step],
                log=lambda s: print(s, flush=True) if s.startswith("step") else None)
    log["init"] = init
    log["trace"] = rows
    log["final"] = res.final
    log["unigram_plateau_nats"] = plateau
    log["train_cpu_s"] = round(time.process_time() - t0, 1)
    log["losses"] = losses
    verdict = res.final["val_loss"] < plateau and all(r["final_corr"] < 0.95 for r in rows)
    log["verdict"] = {"below_plateau": res.final["val_loss"] < plateau,
                      "max_last_layer_corr": max(r["final_corr"] for r in rows), "pass": verdict}
    print(f"val_loss {res.final['val_loss']:.4f} (unigram plateau {plateau:.4f}); "
          f"max last-layer corr {log['verdict']['max_last_layer_corr']:.3f}; pass {verdict}")
    _plot(log, rows, plateau, losses)
    log.save()
    return 0 if math.isfinite(res.final["val_loss"]) else 1


def _plot(log: Log, rows: list[dict], plateau: float, losses: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(14, 3.6))
    ax[0].plot(range(1, len(losses) + 1), losses, lw=0.8, label="train loss")
    ax[0].axhline(plateau, color="k", ls=":", label=f"unigram plateau {plateau:.2f}")
    ax[0].set_xlabel("step")
    ax[0].set_ylabel("nats/byte")
    ax[0].legend()
    steps = [r["step"] for r in rows]
    ax[1].semilogy(steps, [r["max_var"] for r in rows], label="max stream variance")
    ax[1].semilogy(steps, [r["grad_var_ratio"] for r in rows], label="grad var max/min over layers")
    ax[1].set_xlabel("step")
    ax[1].legend()
    ax[2].plot(steps, [r["final_corr"] for r in rows], label="last-layer token correlation")
    ax[2].axhline(0.95, color="k", ls=":")
    ax[2].set_xlabel("step")
    ax[2].legend()
    fig.suptitle(f"1000-layer DSLM decoder, {log['args']['parametrization']} parametrization")
    fig.tight_layout()
    fig.savefig(log.fig("train"), dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
