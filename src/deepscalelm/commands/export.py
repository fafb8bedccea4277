"""``dslm export``: write a checkpoint's weights (sharded FSDP or full) to one safetensors file."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("export", help="write a checkpoint's weights to one .safetensors file (for inference)",
                       description="Export the model weights of CHECKPOINT (a checkpoint directory, or a run "
                                   "directory for its newest checkpoint; sharded FSDP checkpoints are assembled "
                                   "in this one process) to a single safetensors file whose metadata holds the "
                                   "model config. Read it back with deepscalelm.train.sharded.load_exported.")
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("--out", required=True, metavar="FILE", help="output file, ending in .safetensors")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train.sharded import export_model

    path = export_model(args.checkpoint, args.out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0
