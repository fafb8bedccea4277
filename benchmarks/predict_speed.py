"""Time `deepscalelm.predict` for deep models (target: 1000 layers in under 50 ms).

Usage: python benchmarks/predict_speed.py [--layers 1000] [--repeats 15]
Prints the median and minimum wall time per call for each configuration, measured in one run.
"""

from __future__ import annotations

import argparse
import statistics
import time

from deepscalelm import ModelConfig, predict


def time_call(config: ModelConfig, repeats: int) -> list[float]:
    predict(config)  # warm-up (imports, caches)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        predict(config)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--layers", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    rows = []
    for scheme, norm in (("dslm", "pre"), ("dslm", "post"), ("xavier", "pre")):
        for seq_len in (128, 512):
            cfg = ModelConfig(n_layers=args.layers, d_model=128, n_heads=4, seq_len=seq_len,
                              scheme=scheme, norm=norm)
            ts = time_call(cfg, args.repeats)
            rows.append((scheme, norm, seq_len, statistics.median(ts), min(ts)))
    print(f"predict() for a {args.layers}-layer decoder, d_model 128 ({args.repeats} repeats)")
    print(f"{'scheme':<8}{'norm':<6}{'L':>5}{'median ms':>12}{'min ms':>10}")
    for scheme, norm, seq_len, med, lo in rows:
        print(f"{scheme:<8}{norm:<6}{seq_len:>5}{med * 1e3:>12.1f}{lo * 1e3:>10.1f}")


if __name__ == "__main__":
    main()
