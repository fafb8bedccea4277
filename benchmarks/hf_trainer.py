"""A short `transformers.Trainer` run: HF default init against `deepscalelm.apply` (DSLM), same model.

Byte-level Tiny Shakespeare (the built-in corpus: first 90% train, last 10% validation), a
random-weight ``--family`` decoder (GPT-2 or Llama) with ``--layers`` layers at width ``--width``,
AdamW, linear warm-up then constant learning rate, ``--steps`` optimizer steps of ``--batch``
windows of ``--seq`` bytes, for each seed. Prints the final training loss (mean of the last 20
logged steps), the validation loss (nats per byte, 32 fixed windows) and the telemetry's
``var_spread`` (largest over smallest layer-output variance, `TelemetryCallback`) at the first and
last recorded step. CPU is enough at the defaults.

    PYTHONPATH=src python benchmarks/hf_trainer.py [--family gpt2 --layers 24 --width 64 --steps 300 --seeds 0 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import transformers

import deepscalelm
from deepscalelm.data.text import builtin_bytes
from deepscalelm.integrations.hf import TelemetryCallback


class Windows(torch.utils.data.Dataset):
    """``n`` byte windows of length ``seq`` at seeded random offsets of ``data``."""

    def __init__(self, data: torch.Tensor, n: int, seq: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, len(data) - seq, (n,), generator=g)
        self.ids = torch.stack([data[s:s + seq] for s in starts.tolist()])

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def make(family: str, layers: int, width: int, seq: int) -> torch.nn.Module:
    if family == "gpt2":
        cfg = transformers.GPT2Config(n_layer=layers, n_embd=width, n_head=4, vocab_size=256, n_positions=seq,
                                      bos_token_id=0, eos_token_id=0)
        return transformers.GPT2LMHeadModel(cfg)
    cfg = transformers.LlamaConfig(num_hidden_layers=layers, hidden_size=width, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=int(8 * width / 3) // 8 * 8,
                                   vocab_size=256, max_position_embeddings=seq)
    return transformers.LlamaForCausalLM(cfg)


def run(args: argparse.Namespace, init: str, seed: int, train: Windows, val: Windows, out: Path) -> dict:
    torch.manual_seed(seed)
    model = make(args.family, args.layers, args.width, args.seq)
    if init == "dslm":
        model = deepscalelm.apply(model, "dslm", seed=seed)
    targs = transformers.TrainingArguments(
        output_dir=str(out / "trainer"), max_steps=args.steps, per_device_train_batch_size=args.batch,
        learning_rate=args.lr, warmup_steps=args.steps // 10, lr_scheduler_type="constant_with_warmup",
        weight_decay=0.0, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, seed=seed,
        disable_tqdm=True, dataloader_num_workers=0, max_grad_norm=1.0)
    trainer = transformers.Trainer(model=model, args=targs, train_dataset=train)
    cb = TelemetryCallback.attach(trainer, every=max(1, args.steps // 3), path=out / f"{init}_{seed}.jsonl",
                                  per_layer=False)
    t0 = time.time()
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    model.eval()
    with torch.no_grad():
        val_loss = float(model(input_ids=val.ids, labels=val.ids).loss)
    return {"init": init, "seed": seed, "train_loss": statistics.mean(losses[-20:]), "val_loss": val_loss,
            "spread": [r["dslm/var_spread"] for r in cb.records], "seconds": time.time() - t0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", choices=("gpt2", "llama"), default="gpt2")
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = ap.parse_args()
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    data = torch.tensor(list(builtin_bytes()), dtype=torch.long)
    cut = int(0.9 * len(data))
    train = Windows(data[:cut], args.steps * args.batch, args.seq, 0)
    val = Windows(data[cut:], 32, args.seq, 1)
    print(f"{args.family}: {args.layers} layers, d={args.width}, {args.steps} steps x {args.batch} x {args.seq} bytes, "
          f"lr {args.lr}")
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for init in ("hf_default", "dslm"):
                r = run(args, init, seed, train, val, Path(tmp))
                print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}))


if __name__ == "__main__":
    main()
