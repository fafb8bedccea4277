"""``dslm train``: train a model (default: a deep byte-level DSLM decoder on the built-in Tiny Shakespeare)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ..config import ModelConfig


def register(sub: argparse._SubParsersAction) -> None:
    from ..train.config import DEFAULT_PRESET, PRESETS

    p = sub.add_parser(
        "train", help="train a model (default: deep DSLM decoder on Tiny Shakespeare, a few CPU minutes)",
        description=f"Train a model. With no arguments: preset {DEFAULT_PRESET!r}, a deep byte-level Pre-LN DSLM "
                    "decoder on the Tiny Shakespeare corpus shipped with the package. Config precedence: preset < "
                    "--config file < --set key=value < explicit flags. Under `torchrun --nproc_per_node N` "
                    "the same command trains with DistributedDataParallel (or FSDP with --fsdp).")
    p.add_argument("--preset", choices=list(PRESETS), default=None, help=f"named preset (default {DEFAULT_PRESET})")
    p.add_argument("--config", metavar="FILE", help="YAML/TOML/JSON file with 'model' and 'train' sections")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   help="override a field, e.g. --set lr=3e-4 --set model.norm=post (repeatable)")
    p.add_argument("--out", metavar="DIR", help="run directory (default runs/<preset>-<timestamp>; "
                   "with --resume: the newest run under runs/)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument("--data", metavar="PATH", help="text file, directory of text files, PTB directory "
                   "(ptb.{train,valid,test}.txt) or Fashion-MNIST directory (vit)")
    p.add_argument("--tokenizer", metavar="KIND|FILE", help="byte (default), word, bpe, or an existing Hugging "
                   "Face tokenizer.json (GPT-2 or Llama style) to use instead of training one")
    p.add_argument("--max-steps", type=int, help="optimizer steps")
    p.add_argument("--batch-size", type=int, help="sequences per optimizer step over all processes")
    p.add_argument("--micro-batch-size", type=int, help="sequences per forward pass (gradient accumulation)")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--seed", type=int)
    p.add_argument("--seq-len", type=int, help="tokens per sequence (model.seq_len)")
    p.add_argument("--n-layers", type=int, help="model.n_layers")
    p.add_argument("--d-model", type=int, help="model.d_model")
    p.add_argument("--norm", choices=["pre", "post"], help="model.norm")
    p.add_argument("--scheme", help="model.scheme (dslm, xavier, normal, gpt2, deepnet)")
    p.add_argument("--device", help="auto, cpu or cuda[:N]")
    p.add_argument("--threads", type=int, help="CPU threads per process (default: automatic, the idle cores)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model (--no-compile: eager)")
    p.add_argument("--activation-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="recompute layer activations in the backward pass (less memory)")
    p.add_argument("--fsdp", action=argparse.BooleanOptionalAction, default=None,
                   help="shard the model with FSDP (under torchrun)")
    p.add_argument("--parametrization", choices=["standard", "dslm", "completep"],
                   help="standard: one lr for all parameters; dslm: block rates scaled by the stack's effective "
                        "depth, so an lr tuned at 2 layers transfers to deep models (default standard)")
    p.add_argument("--on-nan", choices=["stop", "skip"],
                   help="non-finite loss/gradient: stop (default) or skip the step")
    p.add_argument("--wandb", action=argparse.BooleanOptionalAction, default=None,
                   help="also log metrics to Weights & Biases (needs wandb; WANDB_MODE=offline works)")
    p.add_argument("--wandb-project", metavar="NAME", help="W&B project (default deepscalelm)")
    p.add_argument("--max-nan-skips", type=int, metavar="N",
                   help="with --on-nan skip: stop with an error after N consecutive skipped steps (default 5)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


_FLAGS = {  # argparse dest -> config key
    "data": "train.data", "tokenizer": "train.tokenizer", "max_steps": "train.max_steps",
    "batch_size": "train.batch_size", "micro_batch_size": "train.micro_batch_size", "lr": "train.lr",
    "seed": "train.seed", "seq_len": "model.seq_len", "n_layers": "model.n_layers", "d_model": "model.d_model",
    "norm": "model.norm", "scheme": "model.scheme", "device": "train.device", "threads": "train.threads",
    "precision": "train.precision",
    "compile": "train.compile", "activation_checkpointing": "train.activation_checkpointing",
    "fsdp": "train.fsdp", "on_nan": "train.on_nan", "max_nan_skips": "train.max_nan_skips",
    "parametrization": "train.parametrization", "wandb": "train.wandb", "wandb_project": "train.wandb_project",
}


def _newest_run(root: Path) -> Path:
    from ..errors import DSLMError

    runs = sorted((p for p in root.glob("*") if (p / "run.json").is_file()), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise DSLMError(f"--resume without --out: no run found under {root}/")
    return runs[-1]


def configs_from_args(args: argparse.Namespace) -> tuple[ModelConfig, Any, Path]:
    """(ModelConfig, TrainConfig, run dir) from the command line."""
    from ..train.config import DEFAULT_PRESET, apply_overrides, parse_set, resolve
    from ..train.run import run_configs

    overrides: dict[str, Any] = parse_set(args.set)
    if args.data is not None:
        args.data = str(Path(args.data).expanduser().resolve())
    if args.tokenizer is not None and args.tokenizer.endswith(".json"):
        args.tokenizer = str(Path(args.tokenizer).expanduser().resolve())
    for dest, key in _FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None:
            overrides[key] = value
    name = args.preset or DEFAULT_PRESET
    if args.out:
        out = Path(args.out)
    elif args.resume:
        out = _newest_run(Path("runs"))
        print(f"resuming {out}")
    else:
        out = Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.resume and not args.preset and not args.config and (out / "run.json").is_file():
        model, train = apply_overrides(*run_configs(out), overrides)
    else:
        model, train = resolve(name, args.config, overrides)
    return model, train, out


def run(args: argparse.Namespace) -> int:
    from ..train.loop import train

    model, tcfg, out = configs_from_args(args)
    res = train(out, model, tcfg, resume=args.resume, progress=not args.no_progress)
    if res.run_dir is not None and res.steps:
        import os

        if int(os.environ.get("RANK", "0")) == 0:
            print(f"\nrun {res.run_dir}: {res.steps} steps in {res.seconds / 60:.1f} min this session, "
                  f"{res.tokens_per_s:,.0f} {res.unit}/s")
            print("final " + ", ".join(f"{k} {v:.4f}" for k, v in res.final.items()))
            print(f"checkpoint {res.checkpoint}")
            if res.sample:
                print("sample:\n" + res.sample)
    return 0
