"""Study 10: which parameters make the stream variance grow during training, and does the depth-aware
parametrisation keep the growth independent of depth?

A Pre-LN DSLM decoder (d 32, L 32, batch 8, no dropout) is trained for ``--steps`` AdamW steps on the
Tiny Shakespeare bytes shipped with the package, then its per-layer moments are measured on a fixed
validation batch (`deepscalelm.measure`, paper protocol, eval mode). Part 1 trains only one family of
parameters at a time (block matrices, block biases, norm gains, embeddings) to find what drives the
growth; part 2 trains everything with the standard and the ``dslm`` parametrisation
(`deepscalelm.optim.param_groups`) at two learning rates and three depths.

    PYTHONPATH=src python experiments/s10_drift.py --quick
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import torch
from common import Log, setup, shakespeare_bytes

from deepscalelm import ModelConfig, measure
from deepscalelm.models import build_model
from deepscalelm.optim import param_groups

FAMILIES: dict[str, Callable[[str, torch.nn.Parameter], bool]] = {
    "all": lambda n, p: True,
    "all but biases": lambda n, p: not n.endswith("bias"),
    "block matrices": lambda n, p: "layers." in n and p.ndim >= 2,
    "block biases": lambda n, p: "layers." in n and n.endswith("bias"),
    "norm gains and shifts": lambda n, p: ".ln." in n or n.startswith("ln_f"),
    "embeddings": lambda n, p: "emb" in n,
}


def trained_moments(n_layers: int, lr: float, trains: Callable[[str, torch.nn.Parameter], bool], *, steps: int,
                    d: int, parametrization: str, data: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """Train ``steps`` steps (only the parameters ``trains`` selects) and measure the moments."""
    torch.manual_seed(0)
    tr, va = data
    cfg = ModelConfig(n_layers=n_layers, d_model=d, n_heads=2, seq_len=32, dropout=0.0, attn_dropout=0.0)
    model = build_model(cfg)
    for n, p in model.named_parameters():
        p.requires_grad_(trains(n, p))
    groups = [g for g in param_groups(model, lr, parametrization, weight_decay=0.1) if g["params"]]
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.95))
    g = np.random.default_rng(0)
    probe = torch.from_numpy(np.stack([va[s:s + 32] for s in g.integers(0, len(va) - 32, 4)])).long()
    loss = torch.zeros(())
    for _ in range(steps):
        x = torch.from_numpy(np.stack([tr[i:i + 33] for i in g.integers(0, len(tr) - 33, 8)])).long()
        loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    traj = measure(model, probe, "paper")
    return {"max_var": float(max(traj.column("var"))), "final_corr": float(traj.column("corr")[-1]),
            "train_loss": float(loss.detach())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--d-model", type=int, default=32)
    ap.add_argument("--depths", type=int, nargs="+", default=[4, 32, 128])
    a = ap.parse_args(argv)
    setup(1)
    log = Log("s10_drift", a.quick, vars(a))
    data = shakespeare_bytes()
    kw = {"steps": a.steps, "d": a.d_model, "data": data}
    part1 = []
    for n in a.depths:
        for fam, sel in FAMILIES.items():
            r = trained_moments(n, 1e-2, sel, parametrization="standard", **kw)
            part1.append({"n_layers": n, "trained": fam, **r})
            print(f"lr 1e-2 standard, {n:4d} layers, trained: {fam:22s} max var {r['max_var']:9.3g}  "
                  f"last corr {r['final_corr']:.3f}  loss {r['train_loss']:.3f}", flush=True)
    part2 = []
    for par in ("standard", "dslm"):
        for lr in (1e-2, 1e-3):
            for n in a.depths:
                r = trained_moments(n, lr, FAMILIES["all"], parametrization=par, **kw)
                part2.append({"parametrization": par, "lr": lr, "n_layers": n, **r})
                print(f"{par:8s} lr {lr:g}, {n:4d} layers: max var {r['max_var']:9.3g}  last corr "
                      f"{r['final_corr']:.3f}  loss {r['train_loss']:.3f}", flush=True)
    log["by_family"] = part1
    log["by_parametrization"] = part2
    log.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
