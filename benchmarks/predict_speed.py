"""Time `deepscalelm.predict` for deep models (target: 1000 layers in under 50 ms).

Usage: python benchmarks/predict_speed.py [--layers 1000] [--repeats 15]
For each configuration, measured in one run: the first ("cold") call on a fresh configuration,
then the median and minimum of repeated calls (which reuse the engine's caches). Both wall time
and process CPU time are printed; on a shared machine the CPU time is the better measure.
"""

from __future__ import annotations

import argparse
import statistics
import time

from deepscalelm import ModelConfig, predict


def time_call(config: ModelConfig, repeats: int, positional: bool | None) -> tuple[float, float, list, list]:
    t0, c0 = time.perf_counter(), time.process_time()
    predict(config, positional=positional)
    cold_wall, cold_cpu = time.perf_counter() - t0, time.process_time() - c0
    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        predict(config, positional=positional)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return cold_wall, cold_cpu, walls, cpus


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--layers", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    rows = []
    predict(ModelConfig(n_layers=2))  # imports
    for scheme, norm in (("dslm", "pre"), ("dslm", "post"), ("xavier", "pre"), ("xavier", "post")):
        for seq_len in (128, 512):
            # n_layers + seq_len differ per row, so each row's first call is a cold one
            cfg = ModelConfig(n_layers=args.layers, d_model=128, n_heads=4, seq_len=seq_len,
                              scheme=scheme, norm=norm)
            cw, cc, walls, cpus = time_call(cfg, args.repeats, None)
            rows.append((scheme, norm, seq_len, cw, cc, statistics.median(walls), min(cpus)))
    print(f"predict() for a {args.layers}-layer decoder, d_model 128, default (pooled at this size) "
          f"backward ({args.repeats} repeats)")
    print(f"{'scheme':<8}{'norm':<6}{'L':>5}{'cold wall ms':>14}{'cold cpu ms':>13}"
          f"{'warm wall ms':>14}{'warm cpu ms':>13}")
    for scheme, norm, seq_len, cw, cc, mw, mc in rows:
        print(f"{scheme:<8}{norm:<6}{seq_len:>5}{cw * 1e3:>14.1f}{cc * 1e3:>13.1f}{mw * 1e3:>14.1f}"
              f"{mc * 1e3:>13.1f}")
    cfg = ModelConfig(n_layers=192, d_model=64, n_heads=4, seq_len=64)
    cw, cc, walls, cpus = time_call(cfg, 3, True)
    print(f"position-resolved causal backward, 192 layers, L 64: cold {cw * 1e3:.0f} ms wall, "
          f"{cc * 1e3:.0f} ms cpu; warm median {statistics.median(walls) * 1e3:.0f} ms wall")

if __name__ == "__main__":
    main()
