"""``dslm sweep``: learning rate x depth (or width) grid with the training loop, JSON and transfer plot."""

from __future__ import annotations

import argparse
from typing import Any

from ._config_args import float_list, int_list


def register(sub: argparse._SubParsersAction) -> None:
    from ..train.config import PRESETS

    p = sub.add_parser(
        "sweep", help="learning-rate x depth/width sweep: JSON and the transfer plot (loss vs lr per depth)",
        description="Train one run per (depth or width, learning rate, seed) with the same loop as `dslm train`, "
                    "write OUT/sweep.json after every run (a rerun skips the finished ones) and OUT/transfer.png. "
                    "Example: dslm sweep --preset tiny --depths 2,8,32 --lrs 1e-3,3e-3,1e-2 --parametrization dslm "
                    "--out runs/sweep")
    p.add_argument("--preset", choices=list(PRESETS), default="tiny", help="base configuration (default tiny)")
    p.add_argument("--config", metavar="FILE", help="YAML/TOML/JSON file with 'model' and 'train' sections")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   help="override a field of the base configuration (repeatable), e.g. --set model.d_model=64")
    p.add_argument("--lrs", type=float_list, required=True, help="comma-separated learning rates")
    grid = p.add_mutually_exclusive_group(required=True)
    grid.add_argument("--depths", type=int_list, help="comma-separated n_layers values")
    grid.add_argument("--widths", type=int_list, help="comma-separated d_model values")
    p.add_argument("--seeds", type=int_list, default=None, help="comma-separated seeds (default: the config's seed)")
    p.add_argument("--max-steps", type=int, help="optimizer steps per run")
    p.add_argument("--scheme", help="model.scheme (dslm, xavier, normal, gpt2, deepnet)")
    p.add_argument("--parametrization", choices=["standard", "dslm", "completep"], help="optimiser parametrisation")
    p.add_argument("--out", metavar="DIR", required=True, help="sweep directory (runs, sweep.json, transfer.png)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train.config import parse_set, resolve
    from ..train.sweep import best_lrs, sweep

    overrides: dict[str, Any] = parse_set(args.set)
    for dest, key in (("max_steps", "train.max_steps"), ("scheme", "model.scheme"),
                      ("parametrization", "train.parametrization")):
        if getattr(args, dest) is not None:
            overrides[key] = getattr(args, dest)
    model, train = resolve(args.preset, args.config, overrides)
    runs = sweep(model, train, args.out, lrs=list(args.lrs), depths=args.depths or (), widths=args.widths or (),
                 seeds=args.seeds or ())
    print("best learning rate per " + ("depth" if args.depths else "width") + ":")
    for value, b in best_lrs(runs).items():
        loss = "diverged" if b["val_loss"] is None else f"val_loss {b['val_loss']:.4f}"
        print(f"  {value:>6}: lr {b['lr']:g}  {loss}")
    print(f"wrote {args.out}/sweep.json and {args.out}/transfer.png")
    return 0
