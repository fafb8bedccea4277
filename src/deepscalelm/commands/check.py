"""``dslm check``: measure per-layer moments of a model on one batch, beside the theory, with verdicts."""

from __future__ import annotations

import argparse

from ..errors import DSLMError
from ._config_args import add_config_arguments, config_from_args
from ._output import write_tables


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check", help="diagnose signal propagation of a model on one batch (measured vs predicted)",
        description="One forward + backward pass on a real batch: per-layer stream variance, token "
                    "correlation, gradient moments, attention-logit statistics and weight-gradient norms, "
                    "beside the closed-form prediction, with plain-word verdicts (thresholds: "
                    "docs/diagnostics.md). Without --checkpoint the model is built from the config flags.")
    p.add_argument("--checkpoint", metavar="DIR", help="a deepscalelm training run or checkpoint directory "
                                                       "(model config from its run.json)")
    p.add_argument("--data", metavar="FILE", default="tinyshakespeare",
                   help="text whose bytes form the batch (byte ids; needs vocab_size >= 256): a file, "
                        "'tinyshakespeare' (built-in corpus, default) or 'random' (uniform random ids)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences in the batch (default: 8)")
    p.add_argument("--protocol", choices=("loss", "paper"), default="loss",
                   help="backpropagate the model's loss (default) or a Gaussian gradient at the output (paper)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, data offsets and dropout")
    p.add_argument("--eval", action="store_true", help="eval mode (no dropout); the prediction keeps dropout")
    p.add_argument("--json", metavar="FILE", help="write the report as JSON ('-' for stdout)")
    p.add_argument("--csv", metavar="FILE", help="write the per-layer rows as CSV ('-' for stdout)")
    p.add_argument("--plot", metavar="FILE.png", help="measured and predicted curves, four panels")
    p.add_argument("--every", type=int, default=0, metavar="K", help="table: every K-th layer (default: ~15 rows)")
    p.add_argument("--strict", action="store_true", help="exit with status 1 when a verdict fires")
    add_config_arguments(p)
    p.set_defaults(func=run)


def _batch(data: str, config, batch_size: int, seed: int):
    """Token ids [batch_size, seq_len] from the bytes of ``data`` at seeded offsets, or random ids."""
    import numpy as np
    import torch

    L = config.seq_len
    rng = np.random.default_rng(seed)
    if data == "random":
        return torch.from_numpy(rng.integers(0, config.vocab_size, size=(batch_size, L))), "random ids"
    if config.vocab_size < 256:
        raise ValueError(f"--data text is fed as byte ids (0..255) but vocab_size={config.vocab_size}; "
                         "use --vocab-size 256 or more, or --data random")
    from ..data.text import load_corpus, read_split_text

    corpus = load_corpus(None if data == "tinyshakespeare" else data, val_fraction=0.1)
    split = corpus.splits["train"]
    raw = read_split_text(split, limit=max(1 << 16, 4 * batch_size * L)).encode("utf-8")
    if len(raw) < L + 1:
        raise DSLMError(f"{data} holds {len(raw)} bytes, fewer than seq_len={L} + 1")
    starts = rng.integers(0, len(raw) - L, size=batch_size)
    arr = np.stack([np.frombuffer(raw[s:s + L], dtype=np.uint8) for s in starts]).astype(np.int64)
    return torch.from_numpy(arr), f"{len(starts)} windows of {corpus.name}"


def _load_checkpoint(path: str):
    from ..models import build_model
    from ..train.checkpoint import load_model_state, resolve_checkpoint
    from ..train.run import RUN_FILE, run_configs

    ckpt = resolve_checkpoint(path)
    for cand in (ckpt, ckpt.parent.parent):
        if (cand / RUN_FILE).is_file():
            config, _ = run_configs(cand)
            break
    else:
        raise DSLMError(f"checkpoint {ckpt} has no run.json to read the model config from")
    model = build_model(config)
    state = load_model_state(ckpt, model.state_dict())
    model.load_state_dict(state)
    return model, config, str(ckpt)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..diagnostics import check
    from ..models import build_model

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    torch.manual_seed(args.seed)
    if args.checkpoint:
        model, config, source = _load_checkpoint(args.checkpoint)
    else:
        config = config_from_args(args)
        model = build_model(config)
        source = "fresh initialisation"
    if config.arch not in ("decoder", "encoder"):
        raise ValueError(f"dslm check builds token batches for decoder/encoder models; arch={config.arch!r} "
                         "needs the Python API deepscalelm.diagnostics.check(model, batch)")
    ids, what = _batch(args.data, config, args.batch_size, args.seed)
    model.train(not args.eval)
    report = check(model, ids, config, protocol=args.protocol, seed=args.seed)
    wrote_stdout = write_tables(report, args)
    if args.plot:
        report.plot(args.plot, title=f"{config.arch}, {config.norm}-LN, {config.scheme}, {config.n_layers} layers, "
                                     f"d={config.d_model} ({args.protocol} protocol)")
    if not wrote_stdout:
        print(f"deepscalelm check: {config.arch}, {config.norm}-LN, scheme={config.scheme}, {config.n_layers} layers, "
              f"d_model={config.d_model}, {source}; batch: {what}, shape {list(ids.shape)}; protocol={args.protocol}; "
              f"loss={report.meta['loss']:.4g}")
        print(report.table(args.every))
        print()
        print(report.summary())
        for kind in ("json", "csv", "plot"):
            if getattr(args, kind):
                print(f"wrote {getattr(args, kind)}")
    return 1 if args.strict and report.verdicts else 0
