"""`deepscalelm.apply` on Hugging Face Llama-family models: exactness of the fold and the per-block share.

For random-weight Llama, Mistral, Qwen2 and Qwen3 (QK-norm) decoders (RMSNorm, SwiGLU, RoPE, 4 query
heads over 2 key/value heads) this prints

* ``roundtrip``: relative Frobenius difference of the logits of the applied model and its
  ``save_pretrained`` / ``from_pretrained`` reload;
* ``fold``: relative difference of the folded stock model's logits against an explicit
  x <- lam x + beta F(RMSNorm(x)) forward with the unfolded weights;
* ``share``: per residual block, var(what the block adds to the stream) / var(the stream it reads)
  on one batch of Tiny Shakespeare bytes (no dropout in these models); min, max and max/min over the
  blocks for the Hugging Face default init (N(0, 0.02^2) everywhere) and after ``apply``, whose
  target is beta^2/lam^2 (= 1/(2N-1) at k=2, alpha=1).

    PYTHONPATH=src python benchmarks/hf_llama.py [--layers 48 --width 64 --batch 8 --families llama qwen3]
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
from deepscalelm import ModelConfig
from deepscalelm.data.text import builtin_bytes
from deepscalelm.fold import _initialise
from deepscalelm.structure import resolve
from deepscalelm.theory.schemes import get_scheme

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_hf_llama import FAMILIES, llama_explicit, rel  # noqa: E402


def make(family: str, n: int, d: int) -> torch.nn.Module:
    cfg_name, model_name, extra = FAMILIES[family]
    extra = {**extra, "head_dim": d // 4} if "head_dim" in extra else extra
    cfg = getattr(transformers, cfg_name)(num_hidden_layers=n, hidden_size=d, num_attention_heads=4,
                                          num_key_value_heads=2, intermediate_size=int(8 * d / 3) // 8 * 8,
                                          vocab_size=256, max_position_embeddings=64, attn_implementation="sdpa",
                                          **extra)
    return getattr(transformers, model_name)(cfg).eval()


def shares(model: torch.nn.Module, ids: torch.Tensor) -> list[float]:
    """var(block increment) / var(stream read by the block), for every block in forward order."""
    stream: dict[int, float] = {}
    added: dict[int, float] = {}
    hooks = []

    def keep(store: dict, key: int, pick):
        def hook(_m, args, out=None):
            store[key] = float(pick(args, out).double().var())
        return hook

    for i, layer in enumerate(model.model.layers):
        hooks.append(layer.input_layernorm.register_forward_pre_hook(keep(stream, 2 * i, lambda a, o: a[0])))
        hooks.append(layer.self_attn.register_forward_hook(keep(added, 2 * i, lambda a, o: o[0])))
        hooks.append(layer.post_attention_layernorm.register_forward_pre_hook(
            keep(stream, 2 * i + 1, lambda a, o: a[0])))
        hooks.append(layer.mlp.register_forward_hook(keep(added, 2 * i + 1, lambda a, o: o)))
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    return [added[k] / stream[k] for k in sorted(added)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=48)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    args = ap.parse_args()
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    data = torch.tensor(list(builtin_bytes()[:args.batch * 64]), dtype=torch.long).view(args.batch, 64)
    for family in args.families:
        s0 = shares(make(family, args.layers, args.width), data)
        applied = deepscalelm.apply(make(family, args.layers, args.width), seed=0)
        with tempfile.TemporaryDirectory() as tmp:
            applied.save_pretrained(tmp)
            again = type(applied).from_pretrained(tmp).eval()
        reference = make(family, args.layers, args.width)
        scheme = get_scheme(ModelConfig.from_hf(reference.config, scheme="dslm"))
        _initialise(reference, resolve(reference), scheme, 0)
        merges = [scheme.merge(f"layers.{i}.{b}") for i in range(args.layers) for b in ("attn", "ffn")]
        x = data[:2, :32]
        with torch.no_grad():
            rt = rel(again(x).logits, applied(x).logits)
            fd = rel(applied(x).logits, llama_explicit(reference, x, merges))
        s1 = shares(applied, data)
        lam, beta = merges[0]
        target = beta ** 2 / lam ** 2
        print(f"{family}: {args.layers} layers, d={args.width}: roundtrip {rt:.2e}, fold {fd:.2e}")
        for name, s in (("HF default", s0), ("apply dslm", s1)):
            print(f"  share {name:<11} min {min(s):.4g} max {max(s):.4g} max/min {max(s) / min(s):.3g}")
        print(f"  target beta^2/lam^2 = {target:.4g}; after apply the measured share is "
              f"{min(s1) / target:.2f}..{max(s1) / target:.2f} x the target "
              f"(log10 spread {math.log10(max(s1) / min(s1)):.2f}); attention blocks "
              f"{min(s1[0::2]) / target:.2f}..{max(s1[0::2]) / target:.2f}, MLP blocks "
              f"{min(s1[1::2]) / target:.2f}..{max(s1[1::2]) / target:.2f}")


if __name__ == "__main__":
    main()
