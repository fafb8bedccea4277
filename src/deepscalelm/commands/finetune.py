"""``dslm finetune``: fine-tune a pretrained encoder/decoder checkpoint on a downstream task (a built-in
``--task`` or the user's own ``--train/--dev/--test`` files), or evaluate a fine-tuned checkpoint (``--eval``)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..tasks.files import DEV_FRAC, TASK_TYPES
from ._config_args import float_list, int_list

if TYPE_CHECKING:
    from ..tasks import TaskData


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune", help="fine-tune a pretrained checkpoint on SST-2, BoolQ, DREAM, bAbI or your own files",
        description="Fine-tune CHECKPOINT (a pretrained byte-level encoder or decoder: checkpoint or run "
                    "directory) on a built-in --task or on your own --train [--dev] [--test] files, with a "
                    "learning-rate x seed grid (warm-up, linear decay, weight decay 0.01, clipping 1.0); the best lr "
                    "is chosen on dev and test accuracy is reported as mean ± std over seeds. Own files are JSONL or "
                    "CSV with columns text,label (classification), text_a,text_b,label (pair) or "
                    "question,choices,answer (multiple choice; in CSV choices is a JSON-encoded list). With --eval, "
                    "CHECKPOINT is a fine-tuned checkpoint evaluated on --split.")
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("--task", help="built-in task: sst2, boolq, dream or babi-qa1 ... babi-qa20 (not with --train)")
    p.add_argument("--train", metavar="FILE", help="your own training file (.jsonl, .json, .csv or .tsv)")
    p.add_argument("--dev", metavar="FILE", help="your own dev file; without it a seeded --dev-frac of --train")
    p.add_argument("--test", metavar="FILE", help="your own test file; without it only dev accuracy is reported")
    p.add_argument("--task-type", choices=TASK_TYPES, default=None,
                   help="type of your files (default: inferred from the columns)")
    p.add_argument("--dev-frac", type=float, default=DEV_FRAC,
                   help=f"fraction of --train held out as dev when no --dev is given (default {DEV_FRAC})")
    p.add_argument("--out", help="output directory (must not exist or be empty); required unless --eval")
    p.add_argument("--data-dir", default=None,
                   help="data root holding sst2/, boolq/, dream/, babi/ (default: $DSLM_DATA, else ./data; "
                        "sources in docs/data.md)")
    p.add_argument("--lrs", type=float_list, default=(1e-4, 3e-4), help="comma-separated learning rates")
    p.add_argument("--seeds", type=int_list, default=(0, 1), help="comma-separated seeds")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--max-steps", type=int, default=None, help="cap on optimizer steps per run")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-len", type=int, default=128,
                   help="bytes per input incl. markers; lowered to the checkpoint's seq_len if larger")
    p.add_argument("--warmup", type=float, default=0.1, help="warm-up fraction of the steps")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--max-train", type=int, default=None, help="seeded subset of the training split")
    p.add_argument("--max-eval", type=int, default=None, help="seeded subsets of dev and test")
    p.add_argument("--save", choices=("all", "best", "none"), default="all", help="which runs' weights to keep")
    p.add_argument("--eval", action="store_true", help="evaluate a fine-tuned CHECKPOINT instead of training")
    p.add_argument("--split", default="test", help="split for --eval (train, dev, test)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def _own_files(args: argparse.Namespace) -> bool:
    """True if the user gave data files; ValueError if they also gave --task, or gave neither."""
    files = [f"--{n}" for n in ("train", "dev", "test") if getattr(args, n)]
    if args.task and files:
        raise ValueError(f"--task and {'/'.join(files)} are mutually exclusive: use --task NAME for a built-in "
                         "task or --train FILE [--dev FILE] [--test FILE] for your own data")
    if not args.task and not files:
        raise ValueError("give --task NAME (sst2, boolq, dream, babi-qaN) or --train FILE for your own data")
    if not files and args.task_type:
        raise ValueError("--task-type applies to your own files (--train/--dev/--test), not to --task")
    return bool(files)


def _file_task(args: argparse.Namespace, label_names: list[str] | None = None) -> TaskData:
    """The TaskData of --train/--dev/--test (class names fixed by `label_names` when given)."""
    from ..tasks import load_files

    return load_files(args.train, args.dev, args.test, task_type=args.task_type, dev_frac=args.dev_frac,
                      label_names=label_names)


def _eval_file_task(args: argparse.Namespace) -> TaskData:
    """The user's files for --eval, labelled with the fine-tuned checkpoint's class names."""
    from ..train import checkpoint as ck

    if args.split not in ("train", "dev", "test"):
        raise ValueError(f"--split must be train, dev or test, got {args.split!r}")
    if not getattr(args, args.split) and not (args.split == "dev" and args.train):
        raise ValueError(f"--eval --split {args.split} needs --{args.split} FILE"
                         + (" (or --train FILE for its seeded dev part)" if args.split == "dev" else ""))
    meta = ck.read_state(ck.resolve_checkpoint(args.checkpoint)).get("finetune") or {}
    names = meta.get("label_names") if meta.get("kind") == "classification" else None
    return _file_task(args, names or None)


def run(args: argparse.Namespace) -> int:
    import json

    import torch

    from ..finetune import FinetuneConfig, evaluate_checkpoint, finetune

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    own = _own_files(args)
    if args.eval:
        task = _eval_file_task(args) if own else args.task
        res = evaluate_checkpoint(args.checkpoint, task, args.split, data_dir=args.data_dir, device=args.device)
        print(json.dumps(res) if args.json else f"{res['task']} {res['split']}: accuracy {res['accuracy']:.4f} "
              f"on {res['n']} examples ({res['checkpoint']})")
        return 0
    if own and not args.train:
        raise ValueError("fine-tuning on your own data needs --train FILE (--dev and --test are optional)")
    if not args.out:
        raise ValueError("--out is required when fine-tuning (or pass --eval to evaluate a fine-tuned checkpoint)")
    cfg = FinetuneConfig(lrs=args.lrs, seeds=args.seeds, epochs=args.epochs, max_steps=args.max_steps,
                         batch_size=args.batch_size, max_len=args.max_len, warmup_frac=args.warmup,
                         weight_decay=args.weight_decay, grad_clip=args.grad_clip, save=args.save, device=args.device)
    subset = {"train": args.max_train, "dev": args.max_eval, "test": args.max_eval}
    quiet = args.json
    task = _file_task(args) if own else args.task
    res = finetune(args.checkpoint, task, args.out, cfg, data_dir=args.data_dir, subset=subset,
                   log=(lambda _s: None) if quiet else print)
    if args.json:
        print(json.dumps({k: v for k, v in res.items() if k != "runs"}))
    return 0
