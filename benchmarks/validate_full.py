"""Full-grid component validation (spec §7.1 grids), the long benchmark behind docs/validation.md.

Runs every component on the authors' full grids in float32 (as the authors did), optionally
subsampled (``--stride N`` keeps every N-th grid point; ``--max-runs`` caps the Monte-Carlo runs per
point to bound memory and time on a CPU), and prints / saves the percentile table.

    PYTHONPATH=src python benchmarks/validate_full.py --stride 50 --json full.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv: list[str] | None = None) -> int:
    import torch

    from deepscalelm.validate import COMPONENTS, grid_points, run_points

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--component", default="all")
    p.add_argument("--stride", type=int, default=1, help="keep every STRIDE-th grid point")
    p.add_argument("--max-runs", type=int, default=0, help="cap runs per point (0: authors' runs)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.stride < 1 or args.max_runs < 0 or args.threads < 1:
        raise ValueError("--stride and --threads must be >= 1 and --max-runs >= 0")
    torch.set_num_threads(args.threads)
    names = list(COMPONENTS) if args.component == "all" else [args.component]
    out = {}
    for name in names:
        pts = grid_points(name, "authors")[::args.stride]
        if args.max_runs:
            for pt in pts:
                pt["runs"] = min(pt["runs"], args.max_runs)
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
            json.dump({"stride": args.stride, "max_runs": args.max_runs, "seed": args.seed,
                       "results": out}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
