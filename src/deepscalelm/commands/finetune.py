"""``dslm finetune``: fine-tune a pretrained encoder/decoder checkpoint on a downstream task, or
evaluate a fine-tuned checkpoint (``--eval``)."""

from __future__ import annotations

import argparse


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def register(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser(
        "finetune", help="fine-tune a pretrained checkpoint on SST-2, BoolQ, DREAM or bAbI",
        description="Fine-tune CHECKPOINT (a pretrained byte-level encoder or decoder: checkpoint or run "
                    "directory) on --task with a learning-rate x seed grid (warm-up, linear decay, weight decay "
                    "0.01, clipping 1.0); the best lr is chosen on dev and test accuracy is reported as mean ± std "
                    "over seeds. With --eval, CHECKPOINT is a fine-tuned checkpoint evaluated on --split.")
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("--task", required=True, help="sst2, boolq, dream or babi-qa1 ... babi-qa20")
    p.add_argument("--out", help="output directory (must not exist or be empty); required unless --eval")
    p.add_argument("--data-dir", default=None,
                   help="data root holding sst2/, boolq/, dream/, babi/ (default: $DSLM_DATA, else ./data; "
                        "sources in docs/data.md)")
    p.add_argument("--lrs", type=_floats, default=(1e-4, 3e-4), help="comma-separated learning rates")
    p.add_argument("--seeds", type=_ints, default=(0, 1), help="comma-separated seeds")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--max-steps", type=int, default=None, help="cap on optimizer steps per run")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-len", type=int, default=128, help="bytes per input incl. markers (<= the model's seq_len)")
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


def run(args: argparse.Namespace) -> int:
    import json

    import torch

    from ..finetune import FinetuneConfig, evaluate_checkpoint, finetune

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.eval:
        res = evaluate_checkpoint(args.checkpoint, args.task, args.split, data_dir=args.data_dir, device=args.device)
        print(json.dumps(res) if args.json else f"{res['task']} {res['split']}: accuracy {res['accuracy']:.4f} "
              f"on {res['n']} examples ({res['checkpoint']})")
        return 0
    if not args.out:
        raise ValueError("--out is required when fine-tuning (or pass --eval to evaluate a fine-tuned checkpoint)")
    cfg = FinetuneConfig(lrs=args.lrs, seeds=args.seeds, epochs=args.epochs, max_steps=args.max_steps,
                         batch_size=args.batch_size, max_len=args.max_len, warmup_frac=args.warmup,
                         weight_decay=args.weight_decay, grad_clip=args.grad_clip, save=args.save, device=args.device)
    subset = {"train": args.max_train, "dev": args.max_eval, "test": args.max_eval}
    quiet = args.json
    res = finetune(args.checkpoint, args.task, args.out, cfg, data_dir=args.data_dir, subset=subset,
                   log=(lambda _s: None) if quiet else print)
    if args.json:
        print(json.dumps({k: v for k, v in res.items() if k != "runs"}))
    return 0
