"""Overhead of `deepscalelm.diagnostics.Telemetry` on a training loop, measured side by side.

Plain steps and steps wrapped in ``Telemetry(every=N)`` alternate one by one (N of each per block,
one recorded step per block), on the same model, batch and optimizer; the
overhead is the ratio of the summed block times minus one. Also printed: the cost of one recorded
step relative to a plain step (the overhead should be about (ratio - 1) / N).

    PYTHONPATH=src python benchmarks/telemetry_overhead.py --every 100 --blocks 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from deepscalelm import ModelConfig, build_model
from deepscalelm.diagnostics import Telemetry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--blocks", type=int, default=3, help="pairs of (plain, telemetry) blocks of --every steps")
    ap.add_argument("--n-layers", type=int, default=8)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = ModelConfig(n_layers=args.n_layers, d_model=args.d_model, n_heads=4, seq_len=args.seq_len)
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, cfg.vocab_size, (args.batch_size, args.seq_len), generator=torch.Generator().manual_seed(1))

    def step_plain() -> None:
        model.loss(ids).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with tempfile.TemporaryDirectory() as tmp:
        tel = Telemetry(model, every=args.every, path=Path(tmp) / "t.jsonl")

        def step_tel(i: int) -> None:
            with tel.step(i):
                model.loss(ids).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        for _i in range(5):  # warm-up
            step_plain()
        # steps alternate plain / telemetry one by one, so drifts of a shared machine hit both alike
        plain, telem, recorded = [], [], []
        for _b in range(args.blocks):
            tp = tt = 0.0
            for i in range(args.every):
                t0 = time.perf_counter()
                step_plain()
                t1 = time.perf_counter()
                step_tel(i)
                t2 = time.perf_counter()
                tp += t1 - t0
                tt += t2 - t1
                if i == 0:
                    recorded.append(t2 - t1)
            plain.append(tp)
            telem.append(tt)
        tel.close()
    step = sum(plain) / (args.blocks * args.every)
    ratio = sum(telem) / sum(plain)
    rec = statistics.median(recorded)
    print(f"model: decoder {args.n_layers} layers, d_model {args.d_model}, L {args.seq_len}, batch {args.batch_size}, "
          f"{args.threads} thread(s)")
    print(f"plain step {1e3 * step:.2f} ms; recorded step {1e3 * rec:.2f} ms (x{rec / step:.2f} of a plain step)")
    print(f"every={args.every}: time with telemetry / without = {ratio:.4f} -> overhead {100 * (ratio - 1):+.2f}% "
          f"(expected from the recorded step: {100 * (rec / step - 1) / args.every:+.2f}%)")
    print("per-block ratios: " + ", ".join(f"{t / p:.3f}" for t, p in zip(telem, plain, strict=True)))


if __name__ == "__main__":
    main()
