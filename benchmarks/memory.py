"""Peak resident memory of one training step of a deep decoder, with and without activation
checkpointing (one fresh subprocess per measurement; peak = ru_maxrss of that process).

Target: a 1000-layer, d_model 128 decoder trains a batch of 8 x 128 tokens (forward, backward, SGD
step) within 8 GB of RAM with ``model.set_activation_checkpointing(True)``.

Without checkpointing a 1000-layer step would need well over the memory this shared machine can
spare, so by default the no-checkpointing peak is measured at smaller depths (``--plain-depths``) and
extrapolated linearly to 1000 layers (the activation memory is linear in depth); pass
``--plain-depths 1000`` on a machine with enough RAM to measure it directly.

    PYTHONPATH=src python benchmarks/memory.py [--depth 1000 --plain-depths 100 200]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def child(depth: int, ckpt: bool, d_model: int, batch: int, seq: int) -> None:
    import resource
    import time

    import torch

    from deepscalelm import ModelConfig
    from deepscalelm.models import build_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = ModelConfig(arch="decoder", n_layers=depth, d_model=d_model, n_heads=4, seq_len=seq, vocab_size=256,
                      dropout=0.1, attn_dropout=0.1, scheme="gpt2")
    model = build_model(cfg).train()
    model.set_activation_checkpointing(ckpt)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    ids = torch.randint(0, 256, (batch, seq))
    t0 = time.time()
    loss = model.loss(ids)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB
    print(json.dumps({"depth": depth, "ckpt": ckpt, "params_M": model.num_parameters() / 1e6,
                      "peak_gib": peak, "after_build_gib": before, "step_s": time.time() - t0,
                      "loss": float(loss)}))


def run(depth: int, ckpt: bool, args) -> dict:
    cmd = [sys.executable, __file__, "--child", str(depth), str(int(ckpt)), "--d-model", str(args.d_model),
           "--batch", str(args.batch), "--seq", str(args.seq)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if out.returncode != 0:
        raise RuntimeError(f"measurement {depth} layers ckpt={ckpt} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=1000)
    ap.add_argument("--plain-depths", type=int, nargs="+", default=[100, 200])
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--child", type=int, nargs=2, metavar=("DEPTH", "CKPT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], bool(args.child[1]), args.d_model, args.batch, args.seq)
        return
    print(f"decoder d_model {args.d_model}, batch {args.batch}x{args.seq}, one SGD training step per subprocess")
    results = []
    for depth in args.plain_depths:
        for ckpt in (False, True):
            results.append(run(depth, ckpt, args))
            r = results[-1]
            print(f"  {depth:5d} layers ckpt={str(ckpt):5s} params {r['params_M']:7.1f} M  "
                  f"peak RSS {r['peak_gib']:6.2f} GiB "
                  f"(after build {r['after_build_gib']:5.2f})  step {r['step_s']:6.1f} s", flush=True)
    big = run(args.depth, True, args)
    print(f"  {args.depth:5d} layers ckpt=True  params {big['params_M']:7.1f} M  peak RSS {big['peak_gib']:6.2f} GiB "
          f"(after build {big['after_build_gib']:5.2f})  step {big['step_s']:6.1f} s  "
          f"{'within' if big['peak_gib'] <= 8 else 'ABOVE'} the 8 GB target", flush=True)
    plain = [r for r in results if not r["ckpt"]]
    if args.depth in [r["depth"] for r in plain]:
        return
    if len(plain) >= 2:
        (a, b) = plain[0], plain[-1]
        slope = (b["peak_gib"] - a["peak_gib"]) / (b["depth"] - a["depth"])
        est = b["peak_gib"] + slope * (args.depth - b["depth"])
        print(f"  no checkpointing at {args.depth} layers, linear extrapolation from {a['depth']} and {b['depth']}: "
              f"~{est:.1f} GiB ({slope * 1024:.1f} MiB per layer)")


if __name__ == "__main__":
    main()
