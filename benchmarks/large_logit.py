"""Attention at large logit variance: measured / predicted output and gradient moments.

    python benchmarks/large_logit.py --measure mc.json     # Monte Carlo of the `logit` grid (torch)
    python benchmarks/large_logit.py --predict mc.json     # ratios measured / predicted, per logit variance
    python benchmarks/large_logit.py --model encoder       # whole model: first attention block (torch)

The grid is `deepscalelm.validate.checks.logit_grid` (d_model = d_head = 64, L 16 and 64, input
correlation 0 and 0.5, logit variance 2.56..20). ``--predict`` only needs the theory, so the same
measurement file can be scored by two versions of the engine.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict


def measure(path: str, seed: int) -> None:
    import torch

    from deepscalelm.validate.checks import _attention_mc, logit_grid

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for causal in (False, True):
        for pt in logit_grid("attention"):
            m = _attention_mc(pt, gen, torch.float64, causal)
            rows.append({"pt": pt, "causal": causal, "y": m["y"], "gx": m["gx"]})
    with open(path, "w") as fh:
        json.dump(rows, fh)


def predict(path: str) -> None:
    from deepscalelm.theory.attention import Attention
    from deepscalelm.theory.moments import Grad, Signal

    with open(path) as fh:
        rows = json.load(fh)
    agg: dict[tuple, list] = defaultdict(list)
    for r in rows:
        pt, di = r["pt"], r["pt"]["d_in"]
        head = Attention(di, pt["d_k"], pt["L"], pt["mqk"] ** 2 / di, pt["mqk"] ** 2 / di, pt["mv"] ** 2 / di,
                         attn_dropout=pt["p"], causal=r["causal"])
        x = Signal(0.0, pt["sx"] ** 2, pt["rx"])
        f, b = head.forward(x), head.backward(x, Grad(pt["sg"] ** 2, pt["rg"]))
        ratios = (r["y"]["var"] / f.var, r["y"]["cov"] / f.cov if f.cov else math.nan, r["gx"]["var"] / b.var)
        key = ("causal" if r["causal"] else "bidir", pt["logit_var"])
        agg[key].append(ratios)
        print(f"{key[0]:<7} v={pt['logit_var']:<5} L={pt['L']:<3} rx={pt['rx']:.1f}  measured/predicted: "
              f"out var {ratios[0]:.3f}  out cov {ratios[1]:.3f}  grad var {ratios[2]:.3f}")
    print("\nmean over L and rx, measured/predicted (out var, grad var):")
    for key in sorted(agg):
        vals = agg[key]
        print(f"{key[0]:<7} v={key[1]:<5} out var {sum(v[0] for v in vals) / len(vals):.3f}  "
              f"grad var {sum(v[2] for v in vals) / len(vals):.3f}")


def model_check(arch: str, logit_vars: list[float], seeds: int = 12) -> None:
    """Pre-LN ``arch`` (d_model = d_head = 64, 2 layers, L 64, scheme normal with the std that gives
    each logit variance sigma_s^2 = d^2 std^4 at the LayerNorm output): measured / predicted variance
    of the first attention block's output and of the stream gradient after it, averaged over
    ``seeds`` weight draws (batch 16 of uniform random token ids)."""
    import torch

    from deepscalelm import ModelConfig
    from deepscalelm import predict as predict_model
    from deepscalelm.measure import measure as measure_model
    from deepscalelm.models import build_model

    torch.set_num_threads(2)
    for v in logit_vars:
        cfg = ModelConfig(arch=arch, norm="pre", scheme="normal", std=v ** 0.25 / 8.0, d_model=64, n_heads=1,
                          n_layers=2, seq_len=64, dropout=0.0, attn_dropout=0.0, vocab_size=30522)
        pred = {r.key: r for r in predict_model(cfg)}
        key = next(k for k in pred if k[1] == 1 and k[2] == "attn")
        bv = gv = 0.0
        for seed in range(seeds):
            torch.manual_seed(seed)
            rec = {r.key: r for r in measure_model(build_model(cfg), torch.randint(0, 30522, (16, 64)), seed=seed)}
            bv += rec[key].block_var / seeds
            gv += rec[key].grad_var / seeds
        print(f"{arch} logit var {v:<5} attn block var measured/predicted {bv / pred[key].block_var:.3f}  "
              f"stream grad var {gv / pred[key].grad_var:.3f}  valid={getattr(pred[key], 'valid', None)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--measure", metavar="FILE", help="run the Monte Carlo and write FILE")
    ap.add_argument("--predict", metavar="FILE", help="score the measurements in FILE")
    ap.add_argument("--model", choices=("encoder", "decoder"), help="whole-model check of the first attention block")
    ap.add_argument("--logit-vars", default="1,2.56,3.5,6.5,13,20", help="for --model (comma-separated)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.model:
        model_check(args.model, [float(x) for x in args.logit_vars.split(",")])
    if args.measure:
        measure(args.measure, args.seed)
    if args.predict:
        predict(args.predict)


if __name__ == "__main__":
    main()
