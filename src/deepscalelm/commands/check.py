"""``dslm check``: measure per-layer moments of a model on one batch, beside the theory, with verdicts."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from ..config import ModelConfig
from ..errors import DSLMError
from ._config_args import UNSET, add_config_arguments, config_from_args
from ._output import write_tables


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check", help="diagnose signal propagation of a model on one batch (measured vs predicted)",
        description="One forward + backward pass on a real batch: per-layer stream variance, token "
                    "correlation, gradient moments, attention-logit statistics and weight-gradient norms, "
                    "beside the closed-form prediction, with plain-word verdicts, including one when "
                    "measurement and prediction disagree beyond the tolerance (thresholds: "
                    "docs/diagnostics.md). Works for every arch: decoder and encoder take byte windows of "
                    "the text, encoder-decoder a source window and the window after it as target, vit "
                    "images with labels. Without --checkpoint the model is built from the config flags.")
    p.add_argument("--checkpoint", metavar="DIR", help="a deepscalelm training run or checkpoint directory "
                                                       "(model config from its run.json)")
    p.add_argument("--hf", metavar="DIR",
                   help="a Hugging Face save_pretrained folder (config.json + weights; nothing is downloaded): "
                        "measured beside predicted where the theory covers the model, else measured only with "
                        "a note; a folder written by dslm apply is compared with its scheme, in DSLM units. "
                        f"Sequence length: --seq-len, default min(the model's, {HF_SEQ_LEN}); other config "
                        "flags given explicitly override config.json")
    p.add_argument("--data", metavar="FILE",
                   help="text models: a text file whose bytes form the batch (byte ids; needs vocab_size >= "
                        "256), 'tinyshakespeare' (built-in corpus, the default) or 'random' (uniform random "
                        "ids); vit: a Fashion-MNIST directory or 'random' (Gaussian images and random "
                        "labels, the default)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences or images in the batch (default: 8)")
    p.add_argument("--protocol", choices=("loss", "paper"), default="loss",
                   help="backpropagate the model's loss (default; the theory is then seeded with the gradient "
                        "moments measured at the output) or a Gaussian gradient at the output (paper)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, data offsets and dropout")
    p.add_argument("--eval", action="store_true", help="eval mode (no dropout); the prediction keeps dropout")
    p.add_argument("--json", metavar="FILE", help="write the report as JSON ('-' for stdout)")
    p.add_argument("--csv", metavar="FILE", help="write the per-layer rows as CSV ('-' for stdout)")
    p.add_argument("--plot", metavar="FILE.png", help="write a PNG: measured and predicted curves against the "
                                                      "layer, four panels")
    p.add_argument("--every", type=int, default=0, metavar="K",
                   help="table: every K-th layer with all its sublayers, plus the embedding, layer 1 and the "
                        "last layer (default: K such that about 15 layers are shown)")
    p.add_argument("--strict", action="store_true", help="exit with status 1 when a verdict fires")
    add_config_arguments(p)
    # explicit flags are told apart from defaults (needed to override an --hf config)
    p.set_defaults(func=run, **{f"cfg_{f.name}": UNSET for f in dataclasses.fields(ModelConfig)})


#: default sequence length of dslm check --hf (HF configs give the longest supported one)
HF_SEQ_LEN = 128


def _text_windows(data: str, config, batch_size: int, length: int, rng) -> tuple[Any, str]:
    """Byte windows [batch_size, length] of ``data`` (a file or 'tinyshakespeare') at seeded offsets."""
    import numpy as np

    if config.vocab_size < 256:
        raise ValueError(f"--data text is fed as byte ids (0..255) but vocab_size={config.vocab_size}; "
                         "use --vocab-size 256 or more, or --data random")
    from ..data.text import load_corpus, read_split_text

    corpus = load_corpus(None if data == "tinyshakespeare" else data, val_fraction=0.1)
    split = corpus.splits["train"]
    raw = read_split_text(split, limit=max(1 << 16, 4 * batch_size * length)).encode("utf-8")
    if len(raw) < length + 1:
        raise DSLMError(f"{data} holds {len(raw)} bytes, fewer than the {length} + 1 one batch row needs")
    starts = rng.integers(0, len(raw) - length, size=batch_size)
    arr = np.stack([np.frombuffer(raw[s:s + length], dtype=np.uint8) for s in starts]).astype(np.int64)
    return arr, f"{len(starts)} windows of {corpus.name}"


def _images(data: str, config, batch_size: int, rng) -> tuple[Any, Any, str]:
    """(images [B, C, H, W] float32, labels [B], description) for a ViT."""
    import numpy as np

    shape = (batch_size, config.channels, config.image_size, config.image_size)
    if data == "random":
        images = rng.standard_normal(shape).astype(np.float32)
        labels = rng.integers(0, config.n_classes, size=batch_size)
        return images, labels, f"{batch_size} Gaussian images with random labels"
    from ..data.images import FASHION_MNIST_MEAN, FASHION_MNIST_STD, load_fashion_mnist

    x, y = load_fashion_mnist(data)["train"]
    if (1,) + x.shape[1:] != shape[1:]:
        raise DSLMError(f"{data}: images are {x.shape[1]}x{x.shape[2]} grayscale but the model expects "
                        f"{config.image_size}x{config.image_size}x{config.channels}")
    idx = rng.integers(0, len(x), size=batch_size)
    images = ((x[idx].astype(np.float32) / 255.0 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD)[:, None]
    return images, y[idx].astype(np.int64), f"{batch_size} Fashion-MNIST images from {data}"


def _batch(data: str | None, config, batch_size: int, seed: int) -> tuple[Any, Any, str]:
    """(batch the model is called with, targets or None, description) for ``config.arch``.

    decoder/encoder: token ids [B, seq_len]; encoder-decoder: (source [B, L], target [B, L]), the
    target being the L bytes after the source (random ids for 'random'); vit: images and labels."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    L = config.seq_len
    if config.arch == "vit":
        images, labels, what = _images(data or "random", config, batch_size, rng)
        return torch.from_numpy(images), torch.from_numpy(labels), what
    data = data or "tinyshakespeare"
    length = 2 * L if config.arch == "encoder-decoder" else L
    if data == "random":
        arr, what = rng.integers(0, config.vocab_size, size=(batch_size, length)), "random ids"
    else:
        arr, what = _text_windows(data, config, batch_size, length, rng)
    ids = torch.from_numpy(arr)
    if config.arch == "encoder-decoder":
        return (ids[:, :L], ids[:, L:]), None, what + " (source, then the following bytes as target)"
    return ids, None, what


def _shape_text(batch: Any) -> str:
    if isinstance(batch, tuple):
        return " + ".join(str(list(b.shape)) for b in batch)
    return str(list(batch.shape))


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
    if args.hf:
        if args.checkpoint:
            raise ValueError("give --hf DIR or --checkpoint DIR, not both")
        return _run_hf(args)
    if args.checkpoint:
        model, config, source = _load_checkpoint(args.checkpoint)
    else:
        config = config_from_args(args)
        model = build_model(config)
        source = "fresh initialisation"
    batch, targets, what = _batch(args.data, config, args.batch_size, args.seed)
    model.train(not args.eval)
    report = check(model, batch, config, protocol=args.protocol, targets=targets, seed=args.seed)
    _print_report(report, args, f"deepscalelm check: {config.arch}, {config.norm}-LN, scheme={config.scheme}, "
                                f"{config.n_layers} layers, d_model={config.d_model}, {source}", what, batch)
    return 1 if args.strict and report.verdicts else 0


def _hf_config(args: argparse.Namespace, given: dict) -> tuple[ModelConfig | None, str | None]:
    """(ModelConfig of the --hf folder at the batch's length, or None with the reason it is measured only)."""
    from .predict import config_from_hf_dir

    seq_len = given.pop("seq_len", None)
    try:
        config = config_from_hf_dir(args.hf, given)
    except ValueError as exc:
        return None, str(exc)
    return config.replace(seq_len=seq_len or min(config.seq_len, HF_SEQ_LEN)), None


def _run_hf(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..integrations.hf_check import check_hf
    from .apply import load_hf
    from .predict import _explicit

    given = _explicit(args)
    model = load_hf(Path(args.hf))
    config, why = _hf_config(args, dict(given))
    if config is None:  # measured only: the batch from the HF config's sizes
        hf = model.config
        length = given.get("seq_len") or min(int(getattr(hf, "max_position_embeddings", 0)
                                                 or getattr(hf, "n_positions", HF_SEQ_LEN)), HF_SEQ_LEN)
        sizes = ModelConfig(arch="decoder", vocab_size=int(hf.vocab_size), seq_len=length)
    else:
        sizes = config
    batch, _targets, what = _batch(args.data, sizes, args.batch_size, args.seed)
    model.train(not args.eval)
    report = check_hf(model, batch, config, protocol=args.protocol, seed=args.seed)
    if config is None:
        head = f"deepscalelm check --hf {args.hf}: {type(model).__name__} (no deepscalelm config: {why})"
    else:
        head = (f"deepscalelm check --hf {args.hf}: {type(model).__name__}, {config.norm}-norm, "
                f"scheme={config.scheme}, {config.n_layers} layers, d_model={config.d_model}, L={config.seq_len}")
    _print_report(report, args, head, what, batch)
    return 1 if args.strict and report.verdicts else 0


def _print_report(report: Any, args: argparse.Namespace, head: str, what: str, batch: Any) -> None:
    wrote_stdout = write_tables(report, args)
    if args.plot:
        report.plot(args.plot)
    if not wrote_stdout:
        print(f"{head}; preset={report.meta['preset']}; batch: {what}, shape {_shape_text(batch)}; "
              f"protocol={args.protocol}; loss={report.meta['loss']:.4g}")
        if report.meta.get("prediction_error"):
            print(f"note: measured only, no prediction: {report.meta['prediction_error']}")
        if report.meta.get("dslm_units"):
            print(f"note: folded checkpoint shown in DSLM units: {report.meta['dslm_units']}")
        print(report.table(args.every))
        print()
        print(report.summary())
        for kind in ("json", "csv", "plot"):
            if getattr(args, kind):
                print(f"wrote {getattr(args, kind)}")
