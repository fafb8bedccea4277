"""Theory vs measurement: `deepscalelm.predict` against `deepscalelm.measure`, per sublayer.

For every (arch, norm, scheme, depth) the model is built at small width (d_model 64, 4 heads,
L = 64), put in train mode (dropout 0.1 on embeddings, attention probabilities and block outputs) and
measured on a batch of Tiny Shakespeare byte sequences with the paper protocol (unit iid Gaussian
gradient at the final hidden state). ``same_token_prob`` is set to the batch's empirical
P(two different positions of one sequence hold the same byte). Records are joined on
(stack, layer, block); reported per run, medians over the joined records:

* ``var``:   |var_measured / var_predicted - 1|
* ``corr``:  |corr_measured - corr_predicted|
* ``gvar``:  |grad_var_measured / grad_var_predicted - 1|

    PYTHONPATH=src python benchmarks/agreement.py [--depths 12 48 192 --batch 64 --out runs/agreement.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import deepscalelm
from deepscalelm import ModelConfig
from deepscalelm.data.text import builtin_bytes
from deepscalelm.models import build_model


def shakespeare_batch(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """``batch`` random windows of ``length`` bytes of Tiny Shakespeare (shipped) as token ids in [0, 256)."""
    raw = torch.frombuffer(bytearray(builtin_bytes()), dtype=torch.uint8).long()
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, raw.numel() - length, (batch,), generator=g)
    return torch.stack([raw[s: s + length] for s in starts.tolist()])


def same_token_prob(ids: torch.Tensor) -> float:
    """Mean over sequences of P(positions i != j hold the same token) = sum_v c_v (c_v - 1) / (L (L - 1))."""
    B, L = ids.shape
    counts = torch.zeros(B, int(ids.max()) + 1).scatter_add_(1, ids, torch.ones(B, L))
    return float((counts * (counts - 1)).sum(1).mean() / (L * (L - 1)))


def compare(meas, pred) -> dict[str, float]:
    pairs = meas.join(pred)
    var = [abs(m.var / p.var - 1) for m, p in pairs]
    corr = [abs(m.corr - p.corr) for m, p in pairs]
    gvar = [abs(m.grad_var / p.grad_var - 1) for m, p in pairs if p.grad_var > 0]
    return {"n": len(pairs), "var": statistics.median(var), "corr": statistics.median(corr),
            "gvar": statistics.median(gvar), "var_max": max(var), "gvar_max": max(gvar)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depths", type=int, nargs="+", default=[12, 48, 192])
    ap.add_argument("--archs", nargs="+", default=["decoder", "encoder"])
    ap.add_argument("--norms", nargs="+", default=["pre", "post"])
    ap.add_argument("--schemes", nargs="+", default=["dslm", "xavier", "normal", "gpt2", "deepnet"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/agreement.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ids = shakespeare_batch(args.batch, args.seq)
    p_same = same_token_prob(ids)
    print(f"Tiny Shakespeare bytes: batch {args.batch}x{args.seq}, empirical same_token_prob {p_same:.4f}")
    print(f"{'arch':8s} {'norm':4s} {'scheme':7s} {'N':>4s} {'|var ratio-1|':>13s} {'|corr diff|':>11s} "
          f"{'|gvar ratio-1|':>14s} {'max var err':>11s} {'max gvar err':>12s} {'sec':>5s}")
    rows = []
    for arch in args.archs:
        for norm in args.norms:
            for scheme in args.schemes:
                if scheme == "deepnet" and norm != "post":
                    continue
                for depth in args.depths:
                    t0 = time.time()
                    cfg = ModelConfig(arch=arch, norm=norm, scheme=scheme, n_layers=depth, d_model=args.d_model,
                                      n_heads=4, seq_len=args.seq, vocab_size=256, dropout=0.1, attn_dropout=0.1,
                                      same_token_prob=p_same)
                    torch.manual_seed(depth)
                    model = build_model(cfg).train()
                    meas = deepscalelm.measure(model, ids, protocol="paper", seed=1)
                    pred = deepscalelm.predict(cfg)
                    res = compare(meas, pred)
                    dt = time.time() - t0
                    rows.append({"arch": arch, "norm": norm, "scheme": scheme, "depth": depth, **res,
                                 "measured": meas.to_records(), "predicted": pred.to_records()})
                    print(f"{arch:8s} {norm:4s} {scheme:7s} {depth:4d} {res['var']:13.4f} {res['corr']:11.4f} "
                          f"{res['gvar']:14.4f} {res['var_max']:11.4f} {res['gvar_max']:12.4f} {dt:5.1f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"same_token_prob": p_same, "batch": [args.batch, args.seq], "runs": rows}))
    print(f"per-record measurements and predictions written to {out}")


if __name__ == "__main__":
    main()
