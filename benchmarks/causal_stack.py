"""Causal stacks: measured vs predicted gradient moments per layer (position-resolved backward).

A stack of causal self-attention blocks (``--blocks attn``) or attention + FFN layers
(``--blocks full``), Pre-LN or Post-LN, initialised with a scheme of `deepscalelm.theory.schemes`,
is fed a Gaussian input with token correlation ``--r0`` (unit variance) and seeded with an i.i.d.
unit Gaussian gradient at the top (after the final LayerNorm for Pre-LN). Measured: pooled gradient
variance and correlation at every layer output (the paper's component-check protocol estimator), averaged
over ``--seeds`` weight draws. Predicted: the theory's block chain with the position-resolved backward
(`deepscalelm.theory.positional.causal_backward`) and, for reference, the older pooled backward.

    PYTHONPATH=src python benchmarks/causal_stack.py [--depths 8 48 --norms pre post
        --schemes xavier dslm --blocks attn full --batch 64 --seeds 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from deepscalelm import ModelConfig
from deepscalelm.models.blocks import Attention, FeedForward
from deepscalelm.theory.blocks import ResidualMerge
from deepscalelm.theory.components import LayerNorm
from deepscalelm.theory.model import _make_block, _Step, backward_stack
from deepscalelm.theory.moments import Grad, Signal
from deepscalelm.theory.positional import causal_backward
from deepscalelm.theory.schemes import get_scheme


def block_names(n_layers: int, blocks: str) -> list[tuple[str, str]]:
    kinds = ["attn"] if blocks == "attn" else ["attn", "ffn"]
    return [(f"layers.{i}.{k}", k) for i in range(n_layers) for k in kinds]


def build(cfg: ModelConfig, scheme, names, seed: int) -> torch.nn.ModuleList:
    torch.manual_seed(seed)
    mods = torch.nn.ModuleList()
    for name, kind in names:
        m = Attention(cfg, causal=True) if kind == "attn" else FeedForward(cfg)
        for pname, p in m.named_parameters():
            full = f"{name}.{pname}"
            if pname.startswith("ln."):
                continue
            if pname.endswith("bias"):
                torch.nn.init.zeros_(p)
            else:
                torch.nn.init.normal_(p, std=scheme.weight_var[full] ** 0.5)
        m.lam, m.beta = scheme.merge(name)
        mods.append(m)
    return mods.double().train()


def pooled_moments(g: torch.Tensor) -> tuple[float, float, np.ndarray]:
    """(var, corr, per-position var) of g[B, L, d] with the paper's component-check protocol estimator."""
    B, L, d = g.shape
    s = g.permute(1, 0, 2).reshape(L, B * d)
    s = s - s.mean(1, keepdim=True)
    c = (s @ s.T) / (B * d)
    var = float(g.var(unbiased=False))
    off = (c.sum() - c.diagonal().sum()) / (L * (L - 1))
    return var, float(off) / var, c.diagonal().numpy()


def measure(cfg, scheme, names, r0, batch, seeds, pre):
    L, d = cfg.seq_len, cfg.d_model
    acc = None
    for seed in range(seeds):
        mods = build(cfg, scheme, names, 1000 + seed)
        gen = torch.Generator().manual_seed(seed)
        x = (r0 ** 0.5 * torch.randn(batch, 1, d, generator=gen, dtype=torch.float64)
             + (1 - r0) ** 0.5 * torch.randn(batch, L, d, generator=gen, dtype=torch.float64))
        pts = []
        h = x.requires_grad_(True)
        pts.append(h)
        for m in mods:
            h = m(h)
            h.retain_grad()
            pts.append(h)
        out = torch.nn.functional.layer_norm(h, (d,)) if pre else h
        out.backward(torch.randn(out.shape, generator=gen, dtype=torch.float64))
        res = [pooled_moments(p.grad.detach()) for p in pts]
        acc = res if acc is None else [(a[0] + b[0], a[1] + b[1], a[2] + b[2])
                                       for a, b in zip(acc, res, strict=True)]
    return [(v / seeds, c / seeds, pv / seeds) for v, c, pv in acc]


def predict_stack(cfg, scheme, names, r0, pre, positional=True):
    ln = LayerNorm(cfg.d_model)
    x = Signal(0.0, 1.0, r0)
    steps = []
    for name, kind in names:
        h = ln.forward(x) if pre else x
        comp = _make_block(cfg, scheme.weight_var.__getitem__, name, kind, True)
        f = comp.forward(h)
        merge = ResidualMerge(*scheme.merge(name))
        z = merge.forward(x, f)
        y = z if pre else ln.forward(z)
        steps.append(_Step(name, int(name.split(".")[1]) + 1, kind, comp, merge, x, h, f, z, y, None))
        x = y
    seed = Grad(1.0, 0.0)
    if positional:
        after, g_in, _ = causal_backward(cfg, steps, seed, Signal(0.0, 1.0, r0))
    else:
        after, g_in, _ = backward_stack(cfg, steps, ln.backward(x, seed) if pre else seed)
    return [g_in] + after


def run(depth, norm, scheme_name, blocks, r0, batch, seeds, dropout, verbose):
    cfg = ModelConfig(arch="decoder", norm=norm, scheme=scheme_name, n_layers=depth, d_model=64, n_heads=4,
                      seq_len=64, dropout=dropout, attn_dropout=dropout, emb_dropout=0.0, r0=r0)
    scheme = get_scheme(cfg)
    names = block_names(depth, blocks)
    pre = norm == "pre"
    meas = measure(cfg, scheme, names, r0, batch, seeds, pre)
    new = predict_stack(cfg, scheme, names, r0, pre)
    old = predict_stack(cfg, scheme, names, r0, pre, positional=False)
    ev_new = [abs(m[0] / p.var - 1) for m, p in zip(meas, new, strict=True)]
    ev_old = [abs(m[0] / p.var - 1) for m, p in zip(meas, old, strict=True)]
    ec_new = [abs(m[1] - p.corr) for m, p in zip(meas, new, strict=True)]
    ec_old = [abs(m[1] - p.corr) for m, p in zip(meas, old, strict=True)]
    if verbose:
        print(f"\n{blocks} {norm} {scheme_name} depth {depth}  (point 0 = stack input)")
        print(f"{'pt':>4} {'meas gvar':>10} {'corr':>7} | {'new gvar':>10} {'corr':>7} | {'old gvar':>10} {'corr':>7}")
        step = max(1, len(meas) // 10)
        for i in sorted(set(list(range(0, len(meas), step)) + [len(meas) - 2, len(meas) - 1])):
            m, p, o = meas[i], new[i], old[i]
            print(f"{i:4d} {m[0]:10.4g} {m[1]:7.4f} | {p.var:10.4g} {p.corr:7.4f} | {o.var:10.4g} {o.corr:7.4f}")
        pv = meas[0][2]
        print("   measured per-position grad var at the input:", np.array2string(pv[:6], precision=3), "...",
              np.array2string(pv[-2:], precision=3))
    return (statistics.median(ev_new), statistics.median(ec_new), statistics.median(ev_old),
            statistics.median(ec_old), max(ev_new), max(ev_old))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depths", type=int, nargs="+", default=[8, 48])
    ap.add_argument("--norms", nargs="+", default=["pre", "post"])
    ap.add_argument("--schemes", nargs="+", default=["xavier", "dslm"])
    ap.add_argument("--blocks", nargs="+", default=["attn", "full"])
    ap.add_argument("--r0", type=float, default=0.84)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for blocks in args.blocks:
        for norm in args.norms:
            for scheme in args.schemes:
                for depth in args.depths:
                    t0 = time.time()
                    r = run(depth, norm, scheme, blocks, args.r0, args.batch, args.seeds, args.dropout,
                            not args.quiet)
                    rows.append((blocks, norm, scheme, depth, *r, time.time() - t0))
    print("\nmedian over layers: |gvar_meas/gvar_pred - 1| and |corr_meas - corr_pred| (new = positional, "
          "old = pooled)")
    print(f"{'blocks':6} {'norm':4} {'scheme':7} {'N':>4} {'gvar new':>9} {'corr new':>9} {'gvar old':>9} "
          f"{'corr old':>9} {'max new':>8} {'max old':>8} {'sec':>5}")
    for b, n, s, dpt, a, c, e, f, mx_new, mx_old, dt in rows:
        print(f"{b:6} {n:4} {s:7} {dpt:4d} {a:9.3f} {c:9.4f} {e:9.3f} {f:9.4f} {mx_new:8.3f} {mx_old:8.3f} {dt:5.1f}")


if __name__ == "__main__":
    main()
