"""Full-grid component validation (the grids of the paper's component-check protocol), the long benchmark
behind docs/validation.md.

Runs every component on the authors' full grids in float32 (as the authors did), optionally
subsampled (``--stride N`` keeps every N-th grid point; ``--max-entries`` caps the Monte-Carlo runs
per point so that one (runs, L, d) input tensor has at most that many entries, to bound memory and
time on a CPU), and prints / saves the percentile table.

    PYTHONPATH=src python benchmarks/validate_full.py --stride 50 --json full.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time


def softmax_breakdown(seed: int = 0, length: int = 300, batch: int = 2000) -> None:
    """Print predicted/measured softmax variances for growing logit variance (the paper's Table 1, softmax remark)."""
    import math

    import torch

    from deepscalelm.theory.attention import Softmax
    from deepscalelm.theory.moments import Grad, Signal
    from deepscalelm.validate.protocol import measure, sample_field

    gen = torch.Generator().manual_seed(seed)
    for s2 in (0.25, 1.0, 2.0, 4.0, 9.0):
        x = sample_field(batch, length, 1, 0.0, math.sqrt(s2), 0.0, gen).requires_grad_(True)
        y = torch.softmax(x, 1)
        g = sample_field(batch, length, 1, 0.0, 1.0, 0.0, gen)
        (y * g).sum().backward()
        my, mg = measure(y), measure(x.grad)
        xs = Signal(0.0, s2, 0.0)
        ratios = [Softmax(length, exact=e).forward(xs).var / my["var"] for e in (True, False)]
        gratios = [Softmax(length, exact=e).backward(xs, Grad(1.0, 0.0)).var / mg["var"]
                   for e in (True, False)]
        print(f"sigma^2={s2}: var full/MC {ratios[0]:.2f} approx/MC {ratios[1]:.2f} | "
              f"grad var full/MC {gratios[0]:.2f} approx/MC {gratios[1]:.2f}")


def main(argv: list[str] | None = None) -> int:
    import torch

    from deepscalelm.validate import COMPONENTS, grid_points, run_points

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--component", default="all")
    p.add_argument("--stride", type=int, default=1, help="keep every STRIDE-th grid point")
    p.add_argument("--points", type=int, default=0,
                   help="instead of --stride: this many grid points per component, drawn at random "
                        "(seeded by --seed)")
    p.add_argument("--max-entries", type=int, default=4_000_000,
                   help="cap runs so that runs*L*d <= this (0: the authors' runs)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    p.add_argument("--softmax-breakdown", action="store_true",
                   help="only print the softmax large-variance breakdown table (L=300)")
    args = p.parse_args(argv)
    if args.softmax_breakdown:
        torch.set_num_threads(args.threads)
        softmax_breakdown(args.seed)
        return 0
    if args.stride < 1 or args.max_entries < 0 or args.threads < 1:
        raise ValueError("--stride and --threads must be >= 1 and --max-entries >= 0")
    torch.set_num_threads(args.threads)
    names = list(COMPONENTS) if args.component == "all" else [args.component]
    out = {}
    for name in names:
        full = grid_points(name, "authors")
        if 0 < args.points < len(full):
            keep = sorted(random.Random(f"{name}:{args.seed}").sample(range(len(full)), args.points))
            pts = [full[i] for i in keep]
        else:
            pts = full[::args.stride]
        if args.max_entries:
            for pt in pts:
                width = max(pt.get(k, 1) for k in ("d", "d_in", "d_out"))
                pt["runs"] = max(2, min(pt["runs"], args.max_entries // (pt["L"] * width)))
        t0 = time.perf_counter()
        res = run_points(name, pts, seed=args.seed, dtype=torch.float32)
        res.pop("_seconds")
        out[name] = {q: {"percentiles_pct": [100 * e for e in r["percentiles"]],
                         "max_pct": 100 * max(r["errors"]), "n": r["n"]} for q, r in res.items()}
        for q, r in out[name].items():
            pc = "/".join(f"{v:.1f}" for v in r["percentiles_pct"])
            print(f"{name:<17} {q:<16} {pc:>18} max {r['max_pct']:6.1f} n={r['n']}")
        print(f"{name}: {len(pts)} points in {time.perf_counter() - t0:.0f} s", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"stride": args.stride, "points": args.points, "max_entries": args.max_entries, "seed": args.seed,
                       "results": out}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
