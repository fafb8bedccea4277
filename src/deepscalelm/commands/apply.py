"""``dslm apply``: re-initialise a saved Hugging Face model with a scheme and write a stock checkpoint."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from ..errors import DSLMError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("apply", help="re-initialise a Hugging Face model folder with DeepScaleLM (or another scheme)",
                       description="Load a save_pretrained folder (nothing is downloaded), re-initialise every "
                                   "weight from the scheme with its residual scaling folded into the block "
                                   "output projections, and save a stock checkpoint that transformers' "
                                   "from_pretrained reloads without deepscalelm.")
    p.add_argument("--hf", required=True, metavar="DIR", help="a save_pretrained folder (config.json + weights)")
    p.add_argument("--out", required=True, metavar="DIR2", help="folder to write the applied checkpoint to")
    p.add_argument("--scheme", default="dslm", choices=("dslm", "xavier", "normal", "gpt2", "deepnet"),
                   help="initialisation scheme (default: dslm)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weight draw (default: 0)")
    p.add_argument("--force", action="store_true", help="write into --out even if it is not empty")
    opts = p.add_argument_group("scheme options (only those of the chosen scheme are accepted)")
    opts.add_argument("--k", type=float, help="dslm: beta^2 = k / N^alpha")
    opts.add_argument("--alpha", type=float, help="dslm: beta^2 = k / N^alpha")
    opts.add_argument("--depth-unit", choices=("blocks", "layers"), help="dslm: what N counts")
    opts.add_argument("--seq-len", type=int, help="dslm: sequence length of the V/O schedule "
                                                   "(default: the model's maximum positions)")
    opts.add_argument("--std", type=float, help="normal/gpt2: weight standard deviation")
    p.set_defaults(func=run)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    names = ("k", "alpha", "depth_unit", "seq_len", "std")
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def check_out(out: Path, force: bool, source: Path) -> None:
    """ValueError unless ``out`` is absent, an empty folder, or ``force`` is set."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        same = " (it is the --hf folder)" if out.resolve() == source.resolve() else ""
        raise ValueError(f"--out {out} exists and is not empty{same}; pass --force to write into it")


def load_hf(folder: Path):
    """The model saved in ``folder`` (class from config.json's ``architectures``); ValueError if unreadable."""
    config_file = folder / "config.json"
    if not folder.is_dir():
        raise ValueError(f"--hf {folder} is not a folder (expected a save_pretrained folder)")
    if not config_file.is_file():
        raise ValueError(f"--hf {folder} has no config.json (expected a save_pretrained folder)")
    try:
        archs = json.loads(config_file.read_text()).get("architectures") or []
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"--hf {folder}: config.json is not valid JSON ({exc})") from None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import transformers
    except ImportError:
        raise DSLMError("dslm apply needs transformers: pip install 'deepscalelm[hf]'") from None
    transformers.logging.set_verbosity_error()
    cls = getattr(transformers, archs[0], None) if archs else None
    if cls is None:
        import sys

        print(f"dslm apply: note: config.json names no known class in 'architectures' ({archs or 'none'}): "
              "loading the base model with AutoModel (no task head)", file=sys.stderr)
        cls = transformers.AutoModel
    try:
        return cls.from_pretrained(str(folder))
    except Exception as exc:  # transformers raises OSError, ValueError, safetensors errors, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"--hf {folder}: cannot read the model ({type(exc).__name__}: {first})") from None


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "vocab.txt", "merges.txt", "added_tokens.json", "spiece.model", "tokenizer.model")


def copy_tokenizer(source: Path, out: Path) -> list[str]:
    """Copy the tokenizer files of ``source`` (if any) next to the new weights; returns their names."""
    import shutil

    copied = []
    for name in TOKENIZER_FILES:
        if (source / name).is_file() and (source / name).resolve() != (out / name).resolve():
            shutil.copyfile(source / name, out / name)
            copied.append(name)
    return copied


def run(args: argparse.Namespace) -> int:
    from ..fold import apply, fold_factors
    from ..structure import resolve
    from ..theory.schemes import get_scheme

    source, out = Path(args.hf), Path(args.out)
    check_out(out, args.force, source)
    options = _options(args)
    model: Any = apply(load_hf(source), args.scheme, seed=args.seed, **options)  # a transformers model
    from ..config import ModelConfig

    factors = fold_factors(resolve(model), get_scheme(ModelConfig.from_hf(model.config, scheme=args.scheme,
                                                                          **options)))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    copied = copy_tokenizer(source, out)
    print(f"dslm apply: {type(model).__name__}, scheme={args.scheme}, seed={args.seed}"
          + (f", options {options}" if options else ""))
    print(f"  block output projections scaled by {min(factors):.4g} .. {max(factors):.4g} "
          f"({len(factors)} blocks)")
    print(f"wrote {out} (stock checkpoint; the scheme is recorded as deepscalelm_scheme in config.json)"
          + (f"; copied {', '.join(copied)}" if copied else ""))
    return 0
