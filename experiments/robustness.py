"""Robustness study: a deep-thin DSLM ViT vs a shallow-wide baseline ViT on Fashion-MNIST.

Both ViTs (Pre-LN, patch 7 -> 16 patches + class token) have (nearly) the same parameter count and are
trained with the same optimiser, schedule, batch and steps (`deepscalelm.train.train`, image
objective; each step draws a seeded random batch from the 60k training images, so a quick run sees
``steps * batch`` draws). Deep-thin: DSLM, d = 32; shallow-wide: the authors' baseline init
(``xavier``), d = 64, about 4x fewer layers. Each model is trained with several seeds.

Evaluation on a seeded subset of the 10k test images: clean accuracy and accuracy under Gaussian
noise, blur, contrast reduction and rotation at several severities
(`deepscalelm.finetune.robustness`), mean corruption accuracy and relative robustness
(= mean corruption accuracy / clean accuracy); mean ± sample std over seeds.

Run: ``PYTHONPATH=src python experiments/robustness.py --quick`` (about 8 CPU-minutes on one core);
results go to ``experiments/results/robustness[_quick].json``. Finished training runs in ``--work``
are reused.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from deepscalelm import ModelConfig
from deepscalelm.data.images import FASHION_MNIST_MEAN, FASHION_MNIST_STD, load_fashion_mnist
from deepscalelm.datasets import data_root
from deepscalelm.errors import DSLMError
from deepscalelm.finetune.robustness import CORRUPTIONS, robustness
from deepscalelm.models import build_model
from deepscalelm.train import TrainConfig, train
from deepscalelm.train import checkpoint as ck

ROOT = Path(__file__).resolve().parent


def settings(quick: bool) -> dict:
    if quick:
        return dict(steps=400, batch=64, lr=1e-3, seeds=(0, 1), n_test=1000, severities=(1, 3, 5),
                    deep=(32, 2), wide=(3, 64, 4), patch=7)
    return dict(steps=3000, batch=128, lr=1e-3, seeds=(0, 1, 2), n_test=10000, severities=(1, 2, 3, 4, 5),
                deep=(32, 2), wide=(3, 64, 4), patch=7)


def configs(s: dict) -> dict[str, ModelConfig]:
    nl_w, d_w, h_w = s["wide"]
    base = dict(arch="vit", image_size=28, patch_size=s["patch"], channels=1, n_classes=10, norm="pre")
    wide = ModelConfig(n_layers=nl_w, d_model=d_w, n_heads=h_w, scheme="xavier", **base)
    n_wide = build_model(wide).num_parameters()
    d_d, h_d = s["deep"]
    best = None
    for nl in range(nl_w, 8 * nl_w + 1):
        cfg = ModelConfig(n_layers=nl, d_model=d_d, n_heads=h_d, scheme="dslm", **base)
        n = build_model(cfg, scheme="xavier").num_parameters()
        if best is None or abs(n - n_wide) < abs(best[1] - n_wide):
            best = (cfg, n)
    return {"deep-thin-dslm": best[0], "shallow-wide-baseline": wide}


def train_vit(name: str, mcfg: ModelConfig, s: dict, seed: int, data_dir: str, work: Path) -> Path:
    out = work / f"{name}-seed{seed}"
    tcfg = TrainConfig(data=data_dir, batch_size=s["batch"], max_steps=s["steps"], lr=s["lr"],
                       warmup_steps=max(1, s["steps"] // 10), decay="cosine", weight_decay=0.01,
                       eval_interval=s["steps"], eval_batches=4, ckpt_interval=s["steps"], log_interval=50,
                       sample_tokens=0, seed=seed)
    latest = ck.latest_checkpoint(out) if out.exists() else None
    if latest is not None and ck.read_state(latest)["step"] == s["steps"]:
        print(f"[{name} seed {seed}] reusing {latest}")
        return latest
    if out.exists():
        raise DSLMError(f"{out} holds an unfinished run: delete it and rerun")
    r = train(out, mcfg, tcfg, progress=False, log=lambda m: print(f"[{name} seed {seed}] {m}"))
    return r.checkpoint


def load_vit(ckpt: Path) -> torch.nn.Module:
    state = ck.read_state(ckpt)
    model = build_model(ModelConfig.from_dict(state["model_config"]))
    model.load_state_dict(ck.load_model_state(ckpt, model.state_dict()))
    return model.eval()


def predictor(model: torch.nn.Module, batch: int = 500):
    @torch.no_grad()
    def predict(images: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(images), batch):
            x = (torch.from_numpy(images[i:i + batch]) - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
            out.append(model(x[:, None]).argmax(-1).numpy())
        return np.concatenate(out)

    return predict


def ms(xs: list[float]) -> tuple[float, float]:
    return float(statistics.fmean(xs)), float(statistics.stdev(xs)) if len(xs) > 1 else 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="400 steps, 2 seeds, 1000 test images, severities 1/3/5")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "dslm-robustness"))
    ap.add_argument("--data-dir", default=str(data_root() / "fashion-mnist"),
                    help="Fashion-MNIST folder (default: $DSLM_DATA/fashion-mnist, else ./data/fashion-mnist)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    s = settings(args.quick)
    tag = "quick" if args.quick else "full"
    work = Path(args.work).expanduser() / tag
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    test_x, test_y = load_fashion_mnist(args.data_dir)["val"]
    idx = np.sort(np.random.default_rng(0).choice(len(test_x), size=min(s["n_test"], len(test_x)), replace=False))
    images = test_x[idx].astype(np.float32) / 255.0
    labels = test_y[idx].astype(np.int64)
    results: dict = {"settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in s.items()},
                     "test_subset": {"n": len(idx), "seed": 0}, "models": {}}
    for name, mcfg in configs(s).items():
        runs = []
        for seed in s["seeds"]:
            ckpt = train_vit(name, mcfg, s, seed, args.data_dir, work)
            rob = robustness(predictor(load_vit(ckpt)), images, labels, s["severities"], seed=seed)
            print(f"[{name} seed {seed}] clean {rob['clean']:.4f}, mean corruption {rob['mean_corruption_acc']:.4f}, "
                  f"relative {rob['relative_robustness']:.4f}; " +
                  ", ".join(f"{c} {v:.3f}" for c, v in rob["per_corruption"].items()))
            runs.append({"seed": seed, "checkpoint": str(ckpt), **rob})
        summary = {}
        for key in ("clean", "mean_corruption_acc", "relative_robustness"):
            summary[key] = ms([r[key] for r in runs])
        for c in CORRUPTIONS:
            summary[c] = ms([r["per_corruption"][c] for r in runs])
            for sev in s["severities"]:
                summary[f"{c}@{sev}"] = ms([r["per"][c][str(sev)] for r in runs])
        results["models"][name] = {"config": mcfg.to_dict(), "n_params": build_model(mcfg).num_parameters(),
                                   "train_images_drawn": s["steps"] * s["batch"], "summary": summary, "runs": runs}
    results["seconds"] = round(time.time() - t0, 1)
    dest = ROOT / "results" / f"robustness_{tag}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    ck.write_json_atomic(dest, results)
    print(f"\nwrote {dest}\n")
    cols = ["clean"] + list(CORRUPTIONS) + ["mean_corruption_acc", "relative_robustness"]
    print("| model | params | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for name, m in results["models"].items():
        cells = [f"{m['summary'][c][0]:.3f} ± {m['summary'][c][1]:.3f}" for c in cols]
        print(f"| {name} ({m['config']['n_layers']}x{m['config']['d_model']}) | {m['n_params']:,} | " +
              " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DSLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
