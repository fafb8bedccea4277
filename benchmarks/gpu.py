"""Training throughput (tokens/s) and MFU of the deepscalelm decoder beside Hugging Face GPT-2, eager and compiled.

Usage (from the repository root)::

    PYTHONPATH=src python benchmarks/gpu.py --json gpu.json              # one GPU: both shapes, < 5 min on an H200
    PYTHONPATH=src python benchmarks/gpu.py --tiny --json tiny.json      # CPU check: tiny shapes, a few steps

Cases: every shape x model x mode. Shapes (default): ``d1024xL24`` (d_model 1024, 24 layers, 16 heads,
batch 8 x 1024 tokens) and ``d256xL1000`` (d_model 256, 1000 layers, 4 heads, batch 16 x 256 tokens), both
with a 50304-token vocabulary (GPT-2's, padded to a multiple of 64) and a tied output head. Models:
``ours`` (`deepscalelm.build_model`, DSLM scheme, GeLU, Pre-LN) and ``hf`` (transformers ``GPT2LMHeadModel``
from a ``GPT2Config`` of the same shape, random init, ``attn_implementation="sdpa"``; nothing is downloaded).
Dropout is 0 in both. Modes: ``eager`` and ``compiled`` (``torch.compile``; ``--compile-scope layers``, the
default, compiles each transformer layer, so one graph serves every layer and compile time does not grow
with depth; ``model`` compiles the whole model).

A training step: forward under bf16 autocast (CUDA; fp32 on CPU unless ``--precision bf16``), next-token
cross-entropy in fp32 on the logits, backward, global grad-norm clipping at 1.0, AdamW (fused on CUDA) with
the package's parameter groups. On CUDA, scaled-dot-product attention is restricted to the fused kernels
(flash, memory-efficient, cuDNN): a case that would fall back to the unfused math kernel fails instead.

Timing (each case time-boxed): ``--warmup`` untimed steps (they include compilation; their time is
reported as ``warmup_s``), one calibration step, then ``n = clip(case_seconds / t_step, 2, --steps)``
steps between two ``torch.cuda.synchronize()``. The whole run stops starting new cases after
``--budget-s`` seconds (the skipped cases are listed). Tokens per step = batch x seq_len.

MFU = achieved model FLOP/s / peak dense bf16 FLOP/s of the device, with model FLOPs per token
``6 * n_params + 12 * n_layers * d_model * seq_len`` (matmul weights, forward + backward, plus the attention
scores and values, counted without the causal half that fused kernels skip). ``n_params`` counts every
parameter except the position-embedding table (added, not multiplied); the tied token embedding counts
once, as the output head. Peaks come from a table of known devices (by CUDA device name) or ``--peak-flops``;
without either, MFU is null.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# Dense (no sparsity) bf16 tensor-core peaks in FLOP/s, from the vendors' data sheets; matched in order
# against torch.cuda.get_device_name() (so "H100 PCIe" is tried before "H100").
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989e12),
    ("GH200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
)
MODELS = ("ours", "hf")
MODES = ("eager", "compiled")


@dataclass(frozen=True)
class Shape:
    """One model shape and its batch: sizes in layers, hidden units, heads, tokens."""

    name: str
    n_layers: int
    d_model: int
    n_heads: int
    seq_len: int
    batch: int
    vocab: int


SHAPES = (Shape("d1024xL24", 24, 1024, 16, 1024, 8, 50304), Shape("d256xL1000", 1000, 256, 4, 256, 16, 50304))
TINY = (Shape("tiny-d64xL2", 2, 64, 2, 32, 4, 256), Shape("tiny-d32xL8", 8, 32, 2, 32, 4, 256))


def lookup_peak(device_name: str) -> tuple[float | None, str | None]:
    """(peak dense bf16 FLOP/s, "table: KEY") for a CUDA device name, or (None, None) when not in the table."""
    for key, value in PEAK_BF16_FLOPS:
        if key in device_name:
            return value, f"table: {key}"
    return None, None


def peak_flops(device: torch.device, override: float | None) -> tuple[float | None, str | None]:
    """(peak dense bf16 FLOP/s, where it came from): ``--peak-flops``, the table by device name, or (None, None)."""
    if override is not None:
        if not (math.isfinite(override) and override > 0):
            raise ValueError(f"--peak-flops must be a positive number of FLOP/s, got {override!r}")
        return override, "--peak-flops"
    if device.type != "cuda":
        return None, None
    return lookup_peak(torch.cuda.get_device_name(device))


def matmul_params(model: nn.Module) -> int:
    """Parameters counted by the 6N rule: all of them (tied ones once) except position-embedding tables."""
    skip = {id(m.weight) for name, m in model.named_modules()
            if isinstance(m, nn.Embedding) and name.split(".")[-1] in ("pos_emb", "wpe")}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def flops_per_token(n_params: int, shape: Shape) -> float:
    """Training FLOPs per token: 6 N (forward + backward of the weights) + 12 n_layers d L (attention)."""
    return 6.0 * n_params + 12.0 * shape.n_layers * shape.d_model * shape.seq_len


def build(model: str, shape: Shape, device: torch.device) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor],
                                                                  list[nn.Module]]:
    """(model in train mode, ids -> logits, its transformer layers) for ``model`` in MODELS."""
    if model == "ours":
        from deepscalelm import ModelConfig
        from deepscalelm.models import build_model

        cfg = ModelConfig(arch="decoder", n_layers=shape.n_layers, d_model=shape.d_model, n_heads=shape.n_heads,
                          seq_len=shape.seq_len, vocab_size=shape.vocab, activation="gelu", dropout=0.0,
                          attn_dropout=0.0, scheme="dslm")
        m = build_model(cfg, device=device).train()
        return m, m, list(m.layers)
    if model == "hf":
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(vocab_size=shape.vocab, n_positions=shape.seq_len, n_embd=shape.d_model,
                         n_layer=shape.n_layers, n_head=shape.n_heads, activation_function="gelu", resid_pdrop=0.0,
                         embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False, bos_token_id=0, eos_token_id=0,
                         attn_implementation="sdpa")
        with torch.device(device):
            hf = GPT2LMHeadModel(cfg).train()
        return hf, lambda ids: hf(input_ids=ids).logits, list(hf.transformer.h)
    raise ValueError(f"model must be one of {', '.join(MODELS)}, got {model!r}")


def sdpa_fused_only(device: torch.device) -> contextlib.AbstractContextManager:
    """On CUDA: allow only the fused attention kernels (no silent fallback to the math kernel)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(model: nn.Module, logits_fn: Callable, ids: torch.Tensor, precision: str) -> Callable[[], torch.Tensor]:
    """One training step (forward, fp32 cross-entropy, backward, clip 1.0, AdamW); returns the loss tensor."""
    from deepscalelm.train.optim import param_groups

    dev = ids.device
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-4, betas=(0.9, 0.95),
                            **({"fused": True} if dev.type == "cuda" else {}))
    amp = (torch.autocast(dev.type, dtype=torch.bfloat16) if precision == "bf16"
           else contextlib.nullcontext())
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> torch.Tensor:
        with amp, sdpa_fused_only(dev):
            logits = logits_fn(ids)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def compile_model(model: nn.Module, layers: list[nn.Module], logits_fn: Callable, scope: str) -> Callable:
    """Compile the layers in place (``scope="layers"``) or wrap the whole model (``"model"``); returns logits_fn."""
    if scope == "layers":
        for layer in layers:
            layer.compile()
        return logits_fn
    compiled = torch.compile(logits_fn)
    return compiled


def run_case(shape: Shape, model_name: str, mode: str, args: argparse.Namespace, device: torch.device,
             peak: float | None) -> dict:
    """Build, warm up and time one case; returns its record (tokens/s, MFU, memory, losses, timings)."""
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    model, logits_fn, layers = build(model_name, shape, device)
    n_params = matmul_params(model)
    build_s = time.perf_counter() - t0
    graphs0 = _unique_graphs()
    if mode == "compiled":
        logits_fn = compile_model(model, layers, logits_fn, args.compile_scope)
    ids = torch.randint(0, shape.vocab, (shape.batch, shape.seq_len), device=device,
                        generator=torch.Generator(device=device).manual_seed(1))
    step = make_step(model, logits_fn, ids, args.precision)
    t0 = time.perf_counter()
    first = float(step())
    for _ in range(args.warmup - 1):
        step()
    sync(device)
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    step()
    sync(device)
    t_one = time.perf_counter() - t0
    n = max(2, min(args.steps, int(args.case_seconds / max(t_one, 1e-9))))
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        last = step()
    sync(device)
    sec = (time.perf_counter() - t0) / n
    tok_s = shape.batch * shape.seq_len / sec
    fpt = flops_per_token(n_params, shape)
    rec = {**asdict(shape), "shape": shape.name, "model": model_name, "mode": mode, "status": "ok",
           "n_params": n_params, "flops_per_token": fpt, "build_s": round(build_s, 3), "warmup_steps": args.warmup,
           "warmup_s": round(warmup_s, 3), "timed_steps": n, "s_per_step": sec, "tokens_per_s": tok_s,
           "model_tflops": fpt * tok_s / 1e12, "mfu": (fpt * tok_s / peak) if peak else None,
           "loss_first": first, "loss_last": float(last),
           "graphs_compiled": (_unique_graphs() - graphs0) if mode == "compiled" else 0,
           "max_memory_gib": (torch.cuda.max_memory_allocated(device) / 2**30) if device.type == "cuda" else None}
    rec.pop("name")
    del model, logits_fn, layers, step
    return rec


def _unique_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _free(device: torch.device) -> None:
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def ratios(cases: list[dict]) -> list[dict]:
    """ours/hf per shape and mode, compiled/eager per shape and model (tokens/s ratios; MFU ratios are equal
    up to the two models' FLOP counts, which match for the same shape)."""
    ok = {(c["shape"], c["model"], c["mode"]): c["tokens_per_s"] for c in cases if c["status"] == "ok"}
    out = []
    for shape in dict.fromkeys(c["shape"] for c in cases):
        for mode in MODES:
            if (shape, "ours", mode) in ok and (shape, "hf", mode) in ok:
                out.append({"shape": shape, "ratio": "ours/hf", "of": mode,
                            "value": ok[(shape, "ours", mode)] / ok[(shape, "hf", mode)]})
        for model in MODELS:
            if (shape, model, "compiled") in ok and (shape, model, "eager") in ok:
                out.append({"shape": shape, "ratio": "compiled/eager", "of": model,
                            "value": ok[(shape, model, "compiled")] / ok[(shape, model, "eager")]})
    return out


def table(cases: list[dict], rats: list[dict]) -> str:
    """One text table: a row per shape x model with eager and compiled side by side, then the ours/hf row."""
    get = {(c["shape"], c["model"], c["mode"]): c for c in cases}
    rat = {(r["shape"], r["ratio"], r["of"]): r["value"] for r in rats}

    def cell(c: dict | None) -> str:
        if c is None:
            return f"{'-':>12s} {'-':>7s} {'-':>9s}"
        if c["status"] != "ok":
            return f"{c['status']:>12s} {'':>7s} {'':>9s}"
        mfu = f"{100 * c['mfu']:6.1f}%" if c["mfu"] is not None else f"{'n/a':>7s}"
        return f"{c['tokens_per_s']:12.0f} {mfu} {1e3 * c['s_per_step']:9.2f}"

    def r(x: float | None) -> str:
        return f"{x:8.3f}x" if x is not None else f"{'-':>9s}"

    head = (f"{'shape':14s} {'model':8s} | {'eager tok/s':>12s} {'MFU':>7s} {'ms/step':>9s} | "
            f"{'compiled tok/s':>12s} {'MFU':>7s} {'ms/step':>9s} | {'compiled/eager':>14s}")
    lines = [head, "-" * len(head)]
    for shape in dict.fromkeys(c["shape"] for c in cases):
        for model in MODELS:
            if not any(k[:2] == (shape, model) for k in get):
                continue
            ce = r(rat.get((shape, "compiled/eager", model)))
            lines.append(f"{shape:14s} {model:8s} | {cell(get.get((shape, model, 'eager')))} | "
                         f"{cell(get.get((shape, model, 'compiled')))} | {ce:>14s}")
        e, c = rat.get((shape, "ours/hf", "eager")), rat.get((shape, "ours/hf", "compiled"))
        if e is not None or c is not None:
            blank = f"{'':7s} {'':9s}"
            lines.append(f"{shape:14s} {'ours/hf':8s} | {r(e):>12s} {blank} | {r(c):>12s} {blank} | {'':>14s}")
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (d 64 x 2 layers, d 32 x 8 layers), CPU-sized")
    ap.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--shapes", nargs="+", default=None, help="shape names to run (default: all of the set)")
    ap.add_argument("--precision", choices=("bf16", "fp32"), default=None,
                    help="bf16 autocast (default on CUDA) or fp32 (default on CPU)")
    ap.add_argument("--compile-scope", choices=("layers", "model"), default="layers")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps per case (default 3; --tiny 1)")
    ap.add_argument("--steps", type=int, default=None, help="most timed steps per case (default 30; --tiny 3)")
    ap.add_argument("--case-seconds", type=float, default=8.0, help="target timed seconds per case")
    ap.add_argument("--budget-s", type=float, default=240.0,
                    help="start no new case after this many seconds (a case takes < ~60 s: compile + 8 s timed)")
    ap.add_argument("--peak-flops", type=float, default=None, help="peak dense bf16 FLOP/s of the device")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--debug", action="store_true", help="raise on the first failing case, with the traceback")
    a = ap.parse_args(argv)
    a.warmup = a.warmup if a.warmup is not None else (1 if a.tiny else 3)
    a.steps = a.steps if a.steps is not None else (3 if a.tiny else 30)
    for name in ("warmup", "steps"):
        if getattr(a, name) < 1:
            ap.error(f"--{name} must be >= 1, got {getattr(a, name)}")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch sees no CUDA device (torch {torch.__version__})")
    args.precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    shapes = TINY if args.tiny else SHAPES
    if args.shapes:
        unknown = sorted(set(args.shapes) - {s.name for s in shapes})
        if unknown:
            raise SystemExit(f"unknown shape(s) {unknown}; known: {', '.join(s.name for s in shapes)}")
        shapes = tuple(s for s in shapes if s.name in args.shapes)
    if "hf" in args.models and _hf_version() is None:
        raise SystemExit("transformers is not installed: pip install 'deepscalelm[hf]', or pass --models ours")
    try:
        peak, peak_src = peak_flops(device, args.peak_flops)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    t_start = time.perf_counter()
    cases: list[dict] = []
    for shape in shapes:
        for model in args.models:
            for mode in args.modes:
                base = {**asdict(shape), "shape": shape.name, "model": model, "mode": mode}
                base.pop("name")
                if time.perf_counter() - t_start > args.budget_s:
                    cases.append({**base, "status": "skipped", "error": f"--budget-s {args.budget_s:g} reached"})
                    continue
                print(f"{shape.name} {model} {mode} ...", flush=True)
                try:
                    cases.append(run_case(shape, model, mode, args, device, peak))
                except Exception as e:  # one failed case (OOM, compile error) must not lose the others
                    if args.debug:
                        raise
                    msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
                    print(f"  failed: {msg}", file=sys.stderr, flush=True)
                    traceback.print_exc(limit=3, file=sys.stderr)
                    cases.append({**base, "status": "error", "error": msg})
                _free(device)
    rats = ratios(cases)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
              "device_type": device.type, "torch": torch.__version__, "transformers": _hf_version(),
              "python": platform.python_version(), "precision": args.precision, "compile_scope": args.compile_scope,
              "peak_flops": peak, "peak_source": peak_src, "tiny": args.tiny, "wall_s": time.perf_counter() - t_start,
              "command": " ".join(["python", "benchmarks/gpu.py", *(argv if argv is not None else sys.argv[1:])]),
              "cases": cases, "ratios": rats}
    print(f"\n{result['device']} ({device.type}), {args.precision}, torch {torch.__version__}, "
          f"peak {peak / 1e12:.0f} TFLOP/s ({peak_src})" if peak else
          f"\n{result['device']} ({device.type}), {args.precision}, torch {torch.__version__}, no peak: MFU n/a")
    print(table(cases, rats))
    print(f"wall {result['wall_s']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    return 0 if all(c["status"] == "ok" for c in cases) else 1


def _hf_version() -> str | None:
    try:
        import transformers
    except ImportError:
        return None
    return transformers.__version__


if __name__ == "__main__":
    raise SystemExit(main())
