"""Training-step throughput of the deepscalelm decoder against reference implementations.

Compared side by side in one process, repetitions interleaved (A B C D A B C D ...), medians reported:

* ``dslm``:       deepscalelm GPT with the DSLM scheme (lam, beta != 1);
* ``unit``:       the same model with every lam = beta = 1 (cost of the residual scaling);
* ``plain``:      a straightforward plain-PyTorch GPT of the same shape written below (fused QKV);
* ``hf``:         Hugging Face ``GPT2LMHeadModel`` of the same shape (skipped without transformers).

A training step = forward, mean cross-entropy, backward, AdamW step, zero_grad; tokens/s = B*L/step.

    PYTHONPATH=src python benchmarks/speed.py [--layers 6 --d-model 128 --batch 8 --seq 128 --reps 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from deepscalelm import ModelConfig
from deepscalelm.models import build_model


class PlainBlock(nn.Module):
    def __init__(self, d: int, h: int, p: float) -> None:
        super().__init__()
        self.h, self.p = h, p
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.drop = nn.Dropout(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, L, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.p if self.training else 0.0, is_causal=True)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(B, L, d)))
        return x + self.drop(self.fc2(F.gelu(self.fc1(self.ln2(x)))))


class PlainGPT(nn.Module):
    """A plain Pre-LN GPT: token + position embedding, blocks, final LayerNorm, tied head."""

    def __init__(self, n_layers: int, d: int, h: int, L: int, V: int, p: float) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(V, d), nn.Embedding(L, d)
        self.drop = nn.Dropout(p)
        self.blocks = nn.ModuleList(PlainBlock(d, h, p) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.tok(ids) + self.pos.weight[: ids.shape[1]])
        for b in self.blocks:
            x = b(x)
        return F.linear(self.ln_f(x), self.tok.weight)


def make_step(model: nn.Module, logits_fn, ids: torch.Tensor):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        logits = logits_fn(model, ids)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3, help="training steps per timed repetition")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    cfg = ModelConfig(arch="decoder", n_layers=args.layers, d_model=args.d_model, n_heads=args.heads,
                      seq_len=args.seq, vocab_size=args.vocab, activation="gelu", dropout=0.1,
                      attn_dropout=0.1, scheme="dslm")
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), device=dev)
    call = lambda m, x: m(x)  # noqa: E731
    runs = {}
    ours = build_model(cfg, device=dev).train()
    runs["dslm"] = make_step(ours, call, ids)
    unit = build_model(cfg, device=dev).train()
    for m in unit.modules():
        if hasattr(m, "lam"):
            m.lam, m.beta = 1.0, 1.0
    runs["unit"] = make_step(unit, call, ids)
    plain = PlainGPT(args.layers, args.d_model, args.heads, args.seq, args.vocab, 0.1).to(dev).train()
    runs["plain"] = make_step(plain, call, ids)
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
        hf_cfg = GPT2Config(vocab_size=args.vocab, n_positions=args.seq, n_embd=args.d_model, n_layer=args.layers,
                            n_head=args.heads, activation_function="gelu", resid_pdrop=0.1, embd_pdrop=0.1,
                            attn_pdrop=0.1, bos_token_id=0, eos_token_id=0, attn_implementation="sdpa")
        hf = GPT2LMHeadModel(hf_cfg).to(dev).train()
        runs["hf"] = make_step(hf, lambda m, x: m(input_ids=x).logits, ids)
    except ImportError:
        print("transformers is not installed: skipping the Hugging Face GPT-2 comparison "
              "(pip install 'deepscalelm[hf]')")
    for step in runs.values():  # warm-up
        step()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.reps):
        for name, step in runs.items():
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - t0) / args.steps)
    tok = args.batch * args.seq
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"decoder {args.layers} layers, d_model {args.d_model}, {args.heads} heads, batch {args.batch}x{args.seq}, "
          f"device {dev}, threads {args.threads}, {args.reps} interleaved reps x {args.steps} steps")
    for k, v in med.items():
        print(f"  {k:6s} median step {v * 1e3:8.2f} ms   {tok / v:10.0f} tokens/s")
    print(f"ours (dslm) / plain PyTorch GPT throughput: {med['plain'] / med['dslm']:.3f}  (target >= 0.95)")
    if "hf" in med:
        print(f"ours (dslm) / HF GPT2LMHeadModel throughput: {med['hf'] / med['dslm']:.3f}")
    print(f"DSLM residual-scaling overhead vs lam=beta=1: {100 * (med['dslm'] / med['unit'] - 1):+.2f}%  "
          "(target <= 3%)")


if __name__ == "__main__":
    main()
