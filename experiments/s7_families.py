"""Study 7: other model families at small scale -- deep-thin vs shallow-wide DSLM models at equal
non-embedding parameters (12 N d^2 per stack), same steps, batch, learning rate.

* encoder MLM on Tiny Shakespeare bytes (15 % of positions replaced by a [MASK] id 256, loss on them);
* ViT on Fashion-MNIST (28x28, patch 4, 49 patches + class token), test accuracy on 2000 test images;
* encoder-decoder denoising on Tiny Shakespeare bytes (source: 15 % masked, target: the clean window
  after a BOS id 257, teacher-forced next-token loss).

Pre-LN, dropout 0, AdamW (0.9, 0.95), warm-up 10 % then cosine, clip 1.0.

    PYTHONPATH=src python experiments/s7_families.py --quick     # 2x64 vs 8x32, 120 steps, 1 seed
    PYTHONPATH=src python experiments/s7_families.py             # + 32x16, 1000 steps, 2 seeds
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import DATA, Log, setup, shakespeare_bytes, windows

from deepscalelm.train.optim import param_groups, schedule


def fit(model, batch_fn, loss_fn, steps, lr, warmup):
    import torch

    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=lr, betas=(0.9, 0.95))
    curve, secs = [], 0.0
    model.train()
    for s in range(steps):  # 0-based s: the package's step s + 1, decay one step late (the study's schedule)
        for g in opt.param_groups:
            g["lr"] = schedule(s + 1, lr=lr, warmup_steps=warmup, max_steps=steps, decay="cosine", min_lr_ratio=0.1,
                               decay_lag=1)
        b = batch_fn()
        t = time.perf_counter()
        loss = loss_fn(model, b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        secs += time.perf_counter() - t
        curve.append(float(loss.detach()))
    return curve, secs


def mask_batch(x, rng, p=0.15, mask_id=256):
    import torch

    m = torch.from_numpy(rng.random(x.shape) < p)
    src = x.clone()
    src[m] = mask_id
    tgt = torch.full_like(x, -100)
    tgt[m] = x[m]
    return src, tgt


def family_setup(fam, common, tr, va, rng, vrng):
    """(config, batch_fn, loss_fn, eval_fn) of one family; the functions draw batches from `rng` and
    the fixed validation batches from `vrng` (`tr`, `va`: train / val byte arrays of Tiny Shakespeare)."""
    import torch

    from deepscalelm import ModelConfig
    from deepscalelm.data.images import load_fashion_mnist

    if fam == "mlm":
        cfg = ModelConfig(arch="encoder", seq_len=64, vocab_size=257, **common)
        bf = lambda: mask_batch(windows(tr, 16, 64, rng), rng)
        lf = lambda m, b: m.loss(b[0], targets=b[1])
        vb = [mask_batch(windows(va, 16, 64, vrng), vrng) for _ in range(16)]

        def ev(m):
            with torch.no_grad():
                return {"val_masked_loss": float(np.mean([float(m.loss(s, targets=t)) for s, t in vb]))}
    elif fam == "vit":
        fm = load_fashion_mnist(DATA / "fashion-mnist")
        xtr, ytr = fm["train"]
        xte, yte = fm["val"]
        mu, sd = xtr[:5000].mean() / 255, xtr[:5000].std() / 255
        prep = lambda x: torch.from_numpy(((x.astype(np.float32) / 255 - mu) / sd)[:, None])
        cfg = ModelConfig(arch="vit", image_size=28, patch_size=4, channels=1, n_classes=10, **common)

        def bf():
            i = rng.integers(0, len(xtr), 64)
            return prep(xtr[i]), torch.from_numpy(ytr[i].astype(np.int64))
        lf = lambda m, b: m.loss(b[0], b[1])

        def ev(m):
            with torch.no_grad():
                correct, loss = 0, 0.0
                for j in range(0, 2000, 250):
                    x, y = prep(xte[j:j + 250]), torch.from_numpy(yte[j:j + 250].astype(np.int64))
                    out = m(x)
                    correct += int((out.argmax(-1) == y).sum())
                    loss += float(torch.nn.functional.cross_entropy(out, y)) * len(y)
                return {"test_acc": correct / 2000, "test_loss": loss / 2000}
    else:
        cfg = ModelConfig(arch="encoder-decoder", seq_len=64, vocab_size=258, **common)

        def mk(data, r):
            x = windows(data, 16, 64, r)
            src, _ = mask_batch(x, r)
            tgt = torch.cat([torch.full((x.shape[0], 1), 257), x[:, :-1]], 1)
            return src, tgt, x
        bf = lambda: mk(tr, rng)
        lf = lambda m, b: m.loss(b[0], b[1], targets=b[2])
        vb = [mk(va, vrng) for _ in range(16)]

        def ev(m):
            with torch.no_grad():
                return {"val_loss": float(np.mean([float(m.loss(s, t, targets=x)) for s, t, x in vb]))}
    return cfg, bf, lf, ev


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--families", nargs="*", default=["mlm", "vit", "t5"])
    ap.add_argument("--shapes", nargs="*", default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--seeds", type=int, nargs="*", default=None)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--schemes", nargs="*", default=["dslm"], help="initialisation schemes, e.g. dslm gpt2")
    ap.add_argument("--tag", default="", help="suffix of the log name, e.g. _500steps")
    a = ap.parse_args(argv)
    shapes = a.shapes or (["2x64", "8x32"] if a.quick else ["2x64", "8x32", "32x16"])
    steps = a.steps or (120 if a.quick else 1000)
    seeds = a.seeds or ([0] if a.quick else [0, 1])
    setup()
    import torch

    import deepscalelm

    log = Log("s7_families" + a.tag, a.quick, dict(vars(a), shapes=shapes, steps=steps, seeds=seeds))
    tr, va = shakespeare_bytes()
    runs = []
    for fam in a.families:
        for shape, scheme in [(sh, sc) for sh in shapes for sc in a.schemes]:
            N, d = map(int, shape.split("x"))
            for seed in seeds:
                rng = np.random.default_rng(seed)
                vrng = np.random.default_rng(999)
                common = dict(n_layers=N, d_model=d, n_heads=max(1, d // 16), norm="pre", scheme=scheme,
                              dropout=0.0, attn_dropout=0.0)
                cfg, bf, lf, ev = family_setup(fam, common, tr, va, rng, vrng)
                torch.manual_seed(seed)
                model = deepscalelm.build_model(cfg)
                nemb = sum(p.numel() for n, p in model.named_parameters() if ".layers." in f".{n}")
                curve, secs = fit(model, bf, lf, steps, a.lr, max(5, steps // 10))
                model.eval()
                metrics = ev(model)
                row = {"family": fam, "shape": shape, "scheme": scheme, "seed": seed,
                       "n_params": sum(p.numel() for p in model.parameters()),
                       "n_params_layers": nemb, "loss_curve": curve, "train_last10": float(np.mean(curve[-10:])),
                       "train_seconds": secs, "finite": bool(np.all(np.isfinite(curve))), **metrics}
                runs.append(row)
                print(f"{fam} {shape} {scheme} seed {seed}: {metrics} train(last10) {row['train_last10']:.3f} "
                      f"layer params {nemb} ({secs:.0f}s)", flush=True)
                log["runs"] = runs
                log.save()
    log.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
