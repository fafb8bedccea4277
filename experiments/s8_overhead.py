"""Study 8: wall-clock overhead of DSLM against the baseline at equal shape.

The same decoder shape built twice: `dslm` (merges x <- lam*x + beta*F, lam != 1) and `gpt2`
(lam = beta = 1, one torch.add). Training steps (forward, backward, AdamW) alternate one by one
between the two models on the same batches, after warm-up; medians of the per-step times.

    PYTHONPATH=src python experiments/s8_overhead.py --quick    # 16 x 64, batch 16 x 64, 15 reps
    PYTHONPATH=src python experiments/s8_overhead.py            # + 64 x 32 and 4 x 128, 40 reps
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import Log, median, setup, shakespeare_bytes, windows


def timed_step(model, opt, xb) -> float:
    """Seconds of one training step (forward, backward, optimizer step) of `model` on batch `xb`."""
    t = time.perf_counter()
    loss = model.loss(xb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--shapes", nargs="*", default=None)
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    a = ap.parse_args(argv)
    shapes = a.shapes or (["16x64"] if a.quick else ["4x128", "16x64", "64x32"])
    reps = a.reps or (15 if a.quick else 40)
    setup()
    import torch

    import deepscalelm
    from deepscalelm import ModelConfig

    log = Log("s8_overhead", a.quick, dict(vars(a), shapes=shapes, reps=reps))
    tr, _ = shakespeare_bytes()
    rng = np.random.default_rng(0)
    out = []
    for shape in shapes:
        N, d = map(int, shape.split("x"))
        models, opts = {}, {}
        for scheme in ("dslm", "gpt2"):
            cfg = ModelConfig(arch="decoder", n_layers=N, d_model=d, n_heads=max(1, d // 16), seq_len=a.seq,
                              scheme=scheme, dropout=0.0, attn_dropout=0.0)
            torch.manual_seed(0)
            models[scheme] = deepscalelm.build_model(cfg).train()
            opts[scheme] = torch.optim.AdamW(models[scheme].parameters(), lr=1e-4)
        times = {"dslm": [], "gpt2": []}
        for i in range(reps + 3):
            xb = windows(tr, a.batch, a.seq, rng)
            order = ("dslm", "gpt2") if i % 2 == 0 else ("gpt2", "dslm")
            for s in order:
                dt = timed_step(models[s], opts[s], xb)
                if i >= 3:
                    times[s].append(dt)
        md, mg = median(times["dslm"]), median(times["gpt2"])
        row = {"shape": shape, "ms_dslm": 1e3 * md, "ms_gpt2": 1e3 * mg, "overhead_pct": 100 * (md / mg - 1),
               "times_dslm": times["dslm"], "times_gpt2": times["gpt2"],
               "lam_beta_dslm": [models["dslm"].layers[0].attn.lam, models["dslm"].layers[0].attn.beta]}
        out.append(row)
        print(f"{shape}: dslm {1e3*md:.1f} ms/step, gpt2 {1e3*mg:.1f} ms/step, overhead {row['overhead_pct']:+.1f}%",
              flush=True)
    log["rows"] = out
    log.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
