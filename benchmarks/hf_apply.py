"""`deepscalelm.apply` on Hugging Face GPT-2 and BERT: exactness of the fold and the per-block share.

For random-weight GPT-2 (Pre-LN) and BERT (Post-LN) at small width (d 64, 4 heads) this prints

* ``roundtrip``: relative Frobenius difference of the logits of the applied model and its
  ``save_pretrained`` / ``from_pretrained`` reload (eval mode);
* ``fold``: relative difference of the folded stock model's logits against an explicit
  x <- lam x + beta F forward with the unfolded weights (eval mode);
* ``share``: per residual block, var(what the block adds to the stream) / var(the stream it reads),
  measured in train mode (dropout 0.1) on one batch of Tiny Shakespeare bytes; reported as
  min, max and max/min over the blocks, for the Hugging Face default init and after ``apply``.
  After ``apply`` every block should add beta^2/lam^2 (= 1/(2N-1) at k=2, alpha=1).

    PYTHONPATH=src python benchmarks/hf_apply.py [--layers 48 --width 64 --batch 8]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import torch
import transformers

import deepscalelm
from deepscalelm.data.text import builtin_bytes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_hf_apply import _merges, _unfolded, bert_explicit, gpt2_explicit, rel  # noqa: E402


def make(family: str, n: int, d: int) -> torch.nn.Module:
    if family == "gpt2":
        cfg = transformers.GPT2Config(n_layer=n, n_embd=d, n_head=4, vocab_size=256, n_positions=64,
                                      bos_token_id=0, eos_token_id=0)
        return transformers.GPT2LMHeadModel(cfg)
    cfg = transformers.BertConfig(num_hidden_layers=n, hidden_size=d, num_attention_heads=4, intermediate_size=4 * d,
                                  vocab_size=256, max_position_embeddings=64)
    return transformers.BertForMaskedLM(cfg)


def shares(model: torch.nn.Module, family: str, ids: torch.Tensor) -> list[float]:
    """var(block increment) / var(stream read by the block), for every block in forward order."""
    stream: dict[int, float] = {}
    added: dict[int, float] = {}
    hooks = []

    def keep(store: dict, key: int, pick):
        def hook(_m, args, out=None):
            store[key] = float(pick(args, out).double().var())
        return hook

    if family == "gpt2":
        for i, blk in enumerate(model.transformer.h):
            for j, (norm, drop) in enumerate(((blk.ln_1, blk.attn.resid_dropout), (blk.ln_2, blk.mlp.dropout))):
                hooks.append(norm.register_forward_pre_hook(keep(stream, 2 * i + j, lambda a, o: a[0])))
                hooks.append(drop.register_forward_hook(keep(added, 2 * i + j, lambda a, o: o)))
    else:
        for i, layer in enumerate(model.bert.encoder.layer):
            for j, out_mod in enumerate((layer.attention.output, layer.output)):
                hooks.append(out_mod.register_forward_pre_hook(keep(stream, 2 * i + j, lambda a, o: a[1])))
                hooks.append(out_mod.dropout.register_forward_hook(keep(added, 2 * i + j, lambda a, o: o)))
    with torch.no_grad():
        model.train()(ids)
    for h in hooks:
        h.remove()
    return [added[k] / stream[k] for k in sorted(added)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=48)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    data = torch.tensor(list(builtin_bytes()[:args.batch * 64]), dtype=torch.long).view(args.batch, 64)
    for family in ("gpt2", "bert"):
        explicit = gpt2_explicit if family == "gpt2" else bert_explicit
        default = make(family, args.layers, args.width)
        s0 = shares(default, family, data)
        applied = deepscalelm.apply(make(family, args.layers, args.width), seed=0).eval()
        with tempfile.TemporaryDirectory() as tmp:
            applied.save_pretrained(tmp)
            again = type(applied).from_pretrained(tmp).eval()
        x = data[:2, :32]
        with torch.no_grad():
            rt = rel(again(x).logits, applied(x).logits)
            reference = _unfolded(make(family, args.layers, args.width), seed=0).eval()
            fd = rel(applied(x).logits, explicit(reference, x, _merges(reference)))
        s1 = shares(applied, family, data)
        lam, beta = _merges(reference)[0]
        print(f"{family}: {args.layers} layers, d={args.width}: roundtrip {rt:.2e}, fold {fd:.2e}")
        for name, s in (("HF default", s0), ("apply dslm", s1)):
            print(f"  share {name:<11} min {min(s):.4g} max {max(s):.4g} max/min {max(s) / min(s):.3g}")
        print(f"  target beta^2/lam^2 = {beta ** 2 / lam ** 2:.4g}; after apply the measured share is "
              f"{min(s1) / (beta / lam) ** 2:.2f}..{max(s1) / (beta / lam) ** 2:.2f} x the target "
              f"(log10 spread {math.log10(max(s1) / min(s1)):.2f})")


if __name__ == "__main__":
    main()
