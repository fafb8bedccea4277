"""``dslm eval``: validation loss, perplexity and bits per byte of a checkpoint on a split or a file."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="loss / perplexity / bits-per-byte of a checkpoint",
                       description="Evaluate CHECKPOINT (checkpoint or run directory) on a split of its run's "
                                   "data (--split) or on a text file / directory (--file).")
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--split", default="val", help="split of the run's data: train, val or test (default val)")
    g.add_argument("--file", metavar="PATH",
                   help="text file or directory to evaluate on (encoded with the run's tokenizer)")
    p.add_argument("--max-batches", type=int, default=None, help="cap the number of batches (default: whole split)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: the idle cores)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.epilog = ("Results are named after what was evaluated: file_loss, file_ppl, file_bpb with --file; "
                "<split>_loss, ... with --split (bpb: bits per byte of text; vit runs: <split>_acc).")
    p.set_defaults(func=run)


def _check_file_length(path: str, n_tokens: int, seq_len: int, objective: str) -> None:
    """Raise DSLMError when the --file text is shorter than one evaluation window of the checkpoint."""
    from ..data.objectives import CausalLM, MaskedLM, SpanCorruption
    from ..errors import DSLMError

    kinds: dict[str, type[CausalLM] | type[MaskedLM] | type[SpanCorruption]] = {
        "causal": CausalLM, "mlm": MaskedLM, "span": SpanCorruption}
    need = seq_len + (kinds[objective].extra if objective in kinds else 0)
    if n_tokens < need:
        raise DSLMError(f"--file {path} encodes to {n_tokens:,} tokens, fewer than the {need:,} of one evaluation "
                        f"window (the checkpoint's seq_len {seq_len}{' + 1' if need > seq_len else ''}): "
                        "pass a longer file")


def run(args: argparse.Namespace) -> int:
    import json
    import tempfile
    from pathlib import Path

    from ..data.images import FASHION_MNIST_MEAN, FASHION_MNIST_STD, load_fashion_mnist
    from ..data.objectives import ImageClassification
    from ..data.stream import encode_split, open_stream
    from ..data.text import Split, TextSource, check_text_file, load_corpus
    from ..errors import DSLMError
    from ..train import checkpoint as ck
    from ..train.loop import evaluate
    from ..train.restore import load_for_inference
    from ..train.run import make_objective

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    model, mcfg, tcfg, tok, ckpt, state = load_for_inference(args.checkpoint, args.device, threads=args.threads)
    objective = state.get("objective", "causal")
    device = next(model.parameters()).device
    with tempfile.TemporaryDirectory() as tmpd:
        if objective == "image":
            images = args.file or tcfg.data
            if not images:
                raise DSLMError(f"{ckpt}: the run's config names no Fashion-MNIST directory: use --file")
            sets = load_fashion_mnist(images)
            split = "train" if args.split == "train" else "val"
            data = ImageClassification(*sets[split], seed=tcfg.seed, mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD)
            tpb = None
        else:
            if tok is None:
                raise DSLMError(f"{ckpt}: the run has no tokenizer, needed for objective {objective!r}")
            if args.file:
                p = Path(args.file).expanduser()
                if p.is_dir():
                    corpus = load_corpus(str(p), 0.5)
                    sources = corpus.splits["train"].sources
                    split_obj = Split(sources)
                else:
                    split_obj = Split([TextSource(str(p), check_text_file(p))])
                data_dir, name = Path(tmpd), "file"
                meta = {"splits": {name: encode_split(tok, split_obj, data_dir / "file.bin")}}
                (data_dir / "meta.json").write_text(json.dumps(meta))
            else:
                data_dir, name = ckpt.parent.parent / "data", args.split
                if not (data_dir / "meta.json").is_file():
                    raise DSLMError(f"{data_dir} is missing (the checkpoint was moved away from its run): use --file")
                ck.verify_data_meta(ckpt, state, data_dir)
            stream = open_stream(data_dir, name)
            if args.file:
                _check_file_length(args.file, len(stream), mcfg.seq_len, objective)
            data = make_objective(objective, stream, mcfg, tcfg, tok, name)
            tpb = stream.tokens_per_byte
        res = evaluate(model, data, objective, args.batch_size, device, "fp32", args.max_batches, tpb)
    where = "file" if args.file else args.split
    report = {"checkpoint": str(ckpt), "step": state["step"], "data": str(args.file) if args.file else args.split,
              **relabel(res, where)}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{ckpt} (step {state['step']}) on {'--file ' + str(args.file) if args.file else args.split + ' split'}: "
              + ", ".join(f"{k} {v:.4f}" for k, v in report.items() if isinstance(v, float)))
    return 0


def relabel(metrics: dict[str, float], where: str) -> dict[str, float]:
    """``val_loss`` -> ``<where>_loss`` etc.: the result names what was evaluated ("file", "train",
    "val" or "test"), not the validation split it was computed like."""
    return {(where + k[3:] if k.startswith("val_") else k): v for k, v in metrics.items()}
