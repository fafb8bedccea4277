"""``dslm sample``: generate text from a trained causal-LM checkpoint."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="generate text from a checkpoint (decoder runs)",
                       description="Sample from a causal LM checkpoint: CHECKPOINT is a checkpoint "
                                   "directory or a run directory (its newest checkpoint).")
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("--prompt", default=None, help="text to continue (default: the run's sample prompt: "
                                                   "'ROMEO:' on the built-in corpus, else the start of the "
                                                   "training text's first line)")
    p.add_argument("--length", type=int, default=300, help="tokens to generate (default 300)")
    p.add_argument("--temperature", type=float, default=0.8, help="softmax temperature; 0 = greedy")
    p.add_argument("--top-k", type=int, default=40, help="sample from the k most likely tokens (0 = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: the idle cores)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import DSLMError, with_article
    from ..train.loop import generate
    from ..train.restore import load_for_inference

    if args.length < 0:
        raise ValueError(f"--length must be >= 0, got {args.length}")
    if args.temperature < 0:
        raise ValueError(f"--temperature must be >= 0, got {args.temperature}")
    model, mcfg, tcfg, tok, ckpt, _ = load_for_inference(args.checkpoint, args.device, threads=args.threads)
    if mcfg.arch != "decoder" or tok is None:
        raise DSLMError(f"checkpoint {ckpt} is {with_article(mcfg.arch)} model; sampling needs a decoder (causal LM)")
    prompt = (tcfg.sample_prompt or "") if args.prompt is None else args.prompt
    ids = tok.encode(prompt)
    if not ids:
        raise ValueError("the prompt encodes to no tokens; give a non-empty --prompt")
    out = generate(model, ids, args.length, mcfg.seq_len, temperature=args.temperature,
                   top_k=args.top_k or None, seed=args.seed)
    print(prompt + tok.decode(out))
    return 0
