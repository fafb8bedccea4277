"""Downstream study: a deep-thin DSLM encoder vs a shallow-wide baseline, pretrained alike, fine-tuned on
SST-2, BoolQ, DREAM and bAbI.

Claim tested (paper, "Transformers Get Stable", downstream fine-tuning): at equal parameter count and
equal pretraining tokens, a deeper, thinner model made trainable by DSLM fine-tunes better than the
shallow-wide baseline.

Protocol:

1. Unlabeled pretraining text = the *training* splits of the four tasks (SST-2 sentences, BoolQ
   questions + passages of our train part, DREAM dialogues, bAbI qa1 stories and questions), written
   to a file in ``--work`` (outside the repository: DREAM may not be redistributed). No dev/test text.
2. Both encoders are pretrained with masked LM (byte-level, BERT masking 15 %) with the same
   optimiser, schedule, batch, steps and sequence length, i.e. the same number of pretraining tokens.
   Deep-thin: DSLM, Pre-LN, d = 32; shallow-wide: the authors' baseline init (``xavier``), Pre-LN,
   d = 64, 4x fewer layers; the deep model's depth is chosen to match the baseline's parameter count.
3. Each is fine-tuned on every task with `deepscalelm.finetune` (lr grid × seeds, warm-up, linear decay,
   weight decay 0.01, clipping 1.0, best lr on dev, test mean ± std over seeds).

Run: ``PYTHONPATH=src python experiments/downstream.py --quick`` (about 15 CPU-minutes on one core);
results go to ``experiments/results/downstream[_quick].json``. Re-running reuses finished pretraining
runs and fine-tuning results found in ``--work``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from deepscalelm import ModelConfig
from deepscalelm.errors import DSLMError
from deepscalelm.finetune import FinetuneConfig, finetune
from deepscalelm.formatting import mean_std_text
from deepscalelm.models import build_model
from deepscalelm.tasks import load_task
from deepscalelm.train import TrainConfig, train
from deepscalelm.train import checkpoint as ck

TASKS = ("sst2", "boolq", "dream", "babi-qa1")
ROOT = Path(__file__).resolve().parent


def settings(mode: str) -> dict:
    """Sizes of the study. quick: ~15 CPU-minutes; medium: longer pretraining and fine-tuning on the two
    tasks with the most signal at this scale, one lr (~15 CPU-minutes); full: whole splits (a GPU job)."""
    if mode == "medium":
        return dict(seq_len=96, pre_steps=600, pre_batch=16, pre_lr=1e-3, lrs=(1e-3,), seeds=(0, 1),
                    epochs=3.0, batch=16, subset={"train": 1000, "dev": 200, "test": 400},
                    subset_mc={"train": 300, "dev": 100, "test": 200}, deep=(None, 32, 2), wide=(3, 64, 4),
                    tasks=("sst2", "babi-qa1"))
    if mode == "quick":
        return dict(seq_len=96, pre_steps=250, pre_batch=16, pre_lr=1e-3, lrs=(3e-4, 1e-3), seeds=(0, 1),
                    epochs=2.0, batch=16, subset={"train": 400, "dev": 200, "test": 400},
                    subset_mc={"train": 200, "dev": 100, "test": 200}, deep=(None, 32, 2), wide=(3, 64, 4))
    return dict(seq_len=128, pre_steps=1500, pre_batch=32, pre_lr=1e-3, lrs=(1e-4, 3e-4, 1e-3), seeds=(0, 1, 2),
                epochs=3.0, batch=16, subset={"train": None, "dev": None, "test": None},
                subset_mc={"train": None, "dev": None, "test": None}, deep=(None, 32, 2), wide=(3, 64, 4))


def write_corpus(path: Path, data_dir: str) -> dict[str, int]:
    """Unlabeled text of the tasks' training splits, one record per paragraph; returns bytes per task."""
    if path.is_file():
        return json.loads(path.with_suffix(".json").read_text())
    sizes, parts = {}, []
    for name in TASKS:
        td = load_task(name, data_dir)
        seen: set[str] = set()
        chunk = []
        for ex in td.splits["train"]:
            for t in (ex.text, ex.query or ""):
                if t and t not in seen:  # DREAM / bAbI contexts repeat across questions
                    seen.add(t)
                    chunk.append(t)
        text = "\n\n".join(chunk) + "\n\n"
        sizes[name] = len(text.encode("utf-8"))
        parts.append(text)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(parts), encoding="utf-8")
    tmp.replace(path)
    path.with_suffix(".json").write_text(json.dumps(sizes))
    return sizes


def configs(s: dict) -> dict[str, ModelConfig]:
    """Deep-thin DSLM and shallow-wide baseline with (nearly) equal parameter counts."""
    nl_w, d_w, h_w = s["wide"]
    wide = ModelConfig(arch="encoder", n_layers=nl_w, d_model=d_w, n_heads=h_w, seq_len=s["seq_len"],
                       vocab_size=257, norm="pre", scheme="xavier")
    n_wide = build_model(wide).num_parameters()
    _, d_d, h_d = s["deep"]
    best = None
    for nl in range(nl_w, 8 * nl_w + 1):
        cfg = ModelConfig(arch="encoder", n_layers=nl, d_model=d_d, n_heads=h_d, seq_len=s["seq_len"],
                          vocab_size=257, norm="pre", scheme="dslm")
        n = build_model(cfg, scheme="xavier").num_parameters()  # parameter count does not depend on the scheme
        if best is None or abs(n - n_wide) < abs(best[1] - n_wide):
            best = (cfg, n)
    return {"deep-thin-dslm": best[0], "shallow-wide-baseline": wide}


def pretrain(name: str, mcfg: ModelConfig, s: dict, corpus: Path, work: Path) -> dict:
    out = work / "pretrain" / name
    tcfg = TrainConfig(data=str(corpus), batch_size=s["pre_batch"], max_steps=s["pre_steps"], lr=s["pre_lr"],
                       warmup_steps=max(1, s["pre_steps"] // 10), decay="cosine", weight_decay=0.01,
                       eval_interval=s["pre_steps"], eval_batches=20, ckpt_interval=s["pre_steps"],
                       log_interval=50, sample_tokens=0, seed=1234, val_fraction=0.05)
    latest = ck.latest_checkpoint(out) if out.exists() else None
    if latest is not None and ck.read_state(latest)["step"] == s["pre_steps"]:
        summ = json.loads((out / "summary.json").read_text())
        print(f"[{name}] reusing pretrained {latest}")
        return {"checkpoint": str(latest), "val": {k: summ[k] for k in summ if k.startswith("val")},
                "seconds": summ.get("seconds_this_session")}
    if out.exists():
        raise DSLMError(f"{out} holds an unfinished pretraining run: delete it and rerun")
    t0 = time.time()
    r = train(out, mcfg, tcfg, progress=False, log=lambda m: print(f"[{name}] {m}"))
    return {"checkpoint": str(r.checkpoint), "val": r.final, "seconds": round(time.time() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="subsets, 2 lrs x 2 seeds, 250 pretraining steps")
    g.add_argument("--medium", action="store_true", help="600 pretraining steps; sst2 and babi-qa1, 1 lr x 2 seeds")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "dslm-downstream"),
                    help="scratch directory (pretraining runs, checkpoints)")
    ap.add_argument("--data-dir", default=None, help="data root (default: $DSLM_DATA, else ./data)")
    ap.add_argument("--tasks", default=None, help=f"comma-separated (default {','.join(TASKS)}; medium: sst2,babi-qa1)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    tag = "quick" if args.quick else "medium" if args.medium else "full"
    s = settings(tag)
    work = Path(args.work).expanduser() / tag
    work.mkdir(parents=True, exist_ok=True)
    tasks = [t for t in args.tasks.split(",") if t] if args.tasks else list(s.pop("tasks", TASKS))
    corpus = work / "corpus.txt"
    corpus_sizes = write_corpus(corpus, args.data_dir)
    cfgs = configs(s)
    t_start = time.time()
    results: dict = {"settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in s.items()},
                     "corpus_bytes": corpus_sizes, "models": {}, "tasks": {}}
    for name, mcfg in cfgs.items():
        n_params = build_model(mcfg).num_parameters()
        pre = pretrain(name, mcfg, s, corpus, work)
        results["models"][name] = {"config": mcfg.to_dict(), "n_params": n_params,
                                   "pretrain_tokens": s["pre_steps"] * s["pre_batch"] * s["seq_len"], **pre}
        print(f"[{name}] {mcfg.n_layers} layers x d {mcfg.d_model}, {n_params:,} parameters, "
              f"pretraining val {pre['val']}")
    fcfg = dict(lrs=s["lrs"], seeds=s["seeds"], epochs=s["epochs"], batch_size=s["batch"], max_len=s["seq_len"],
                save="best")
    for task in tasks:
        results["tasks"][task] = {}
        for name in cfgs:
            out = work / "finetune" / name / task
            if (out / "results.json").is_file():
                res = json.loads((out / "results.json").read_text())
                print(f"[{name}] {task}: reusing {out}/results.json")
            else:
                sub = s["subset_mc"] if task == "dream" else s["subset"]
                bs = max(4, s["batch"] // 2) if task == "dream" else s["batch"]
                res = finetune(results["models"][name]["checkpoint"], task, out,
                               FinetuneConfig(**{**fcfg, "batch_size": bs}), data_dir=args.data_dir, subset=sub,
                               log=lambda m, n=name: print(f"[{n}] {m}"))
            results["tasks"][task][name] = res
    results["seconds"] = round(time.time() - t_start, 1)
    dest = ROOT / "results" / f"downstream_{tag}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    ck.write_json_atomic(dest, results)
    print(f"\nwrote {dest}\n")
    print("| task | model | best lr | dev acc | test acc (mean ± std over seeds) | majority |")
    print("|---|---|---|---|---|---|")
    for task, per in results["tasks"].items():
        for name, r in per.items():
            n = r["n_seeds"]
            print(f"| {task} | {name} | {r['best_lr']:g} | {mean_std_text(r['dev_mean'], r['dev_std'], n, 3)} | "
                  f"{mean_std_text(r['test_mean'], r['test_std'], n, 3)} | {r['majority_test_acc']:.3f} |")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DSLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
