"""Training throughput of a preset (tokens/s) and the time from a fresh clone to the first training step.

Usage (from the repository root)::

    PYTHONPATH=src python benchmarks/train_throughput.py                    # default preset, 10 timed steps
    PYTHONPATH=src python benchmarks/train_throughput.py --steps 20 --threads 2   # force 2 threads
    PYTHONPATH=src python benchmarks/train_throughput.py --clone            # also: fresh clone -> first step

Throughput: the optimizer steps of the training loop (forward, cross-entropy, backward, clipping,
AdamW) on batches of the built-in corpus, after ``--warmup`` untimed steps, in tokens (sequence
positions) per second of wall-clock time. The clone measurement runs ``git clone`` of this repository
into a temporary directory and then ``dslm train --max-steps 1`` from the clone (imports, corpus
decompression and encoding, model build, first step); it stops the clock when the first line of
``metrics.jsonl`` appears. It does not install packages (the environment's are used).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def throughput(preset_name: str, steps: int, warmup: int, threads: int | None) -> dict:
    import numpy as np
    import torch

    from deepscalelm.data.objectives import CausalLM
    from deepscalelm.data.stream import TokenStream
    from deepscalelm.data.text import load_corpus
    from deepscalelm.models import build_model
    from deepscalelm.train.config import preset
    from deepscalelm.train.loop import auto_threads, forward, loss_sum, to_device
    from deepscalelm.train.optim import param_groups

    torch.set_num_threads(threads or auto_threads())
    mcfg, tcfg = preset(preset_name)
    if mcfg.arch != "decoder":
        raise SystemExit("throughput benchmark covers decoder presets")
    corpus = load_corpus(None)
    raw = b"".join(corpus.splits["train"].chunks())
    stream = TokenStream(np.frombuffer(raw, dtype=np.uint8), len(raw))
    data = CausalLM(stream, mcfg.seq_len, mcfg.vocab_size, tcfg.seed, "train")
    torch.manual_seed(tcfg.seed)
    model = build_model(mcfg)
    opt = torch.optim.AdamW(param_groups(model, tcfg.weight_decay), lr=tcfg.lr, betas=(tcfg.beta1, tcfg.beta2))
    model.train()
    times = []
    for s in range(1, warmup + steps + 1):
        t = time.perf_counter()
        b = to_device(data.batch(s, tcfg.batch_size), torch.device("cpu"))
        tot, cnt = loss_sum(forward(model, "causal", b), b["labels"])
        (tot / cnt).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if s > warmup:
            times.append(time.perf_counter() - t)
    tokens = tcfg.batch_size * mcfg.seq_len
    sec = sum(times)
    return {"preset": preset_name, "n_layers": mcfg.n_layers, "d_model": mcfg.d_model, "seq_len": mcfg.seq_len,
            "batch_size": tcfg.batch_size, "params": sum(p.numel() for p in model.parameters()),
            "threads": torch.get_num_threads(), "timed_steps": steps, "s_per_step": sec / steps,
            "tokens_per_s": tokens * steps / sec, "est_minutes_default_run": tcfg.max_steps * sec / steps / 60,
            "load_avg_1min": os.getloadavg()[0]}


def clone_to_first_step(repo: Path, timeout: float = 900.0) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        subprocess.run(["git", "clone", "-q", str(repo), f"{tmp}/clone"], check=True)
        t_clone = time.perf_counter() - t0
        out = Path(tmp) / "run"
        env = dict(os.environ, PYTHONPATH=f"{tmp}/clone/src")
        proc = subprocess.Popen([sys.executable, "-m", "deepscalelm.cli", "train", "--max-steps", "1",
                                 "--out", str(out), "--no-progress"], cwd=f"{tmp}/clone", env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        first = None
        while time.perf_counter() - t0 < timeout:
            m = out / "metrics.jsonl"
            if m.exists() and m.stat().st_size > 0:
                first = time.perf_counter() - t0
                break
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        proc.kill()
        proc.wait()
        if first is None:
            raise SystemExit(f"no training step: {proc.stderr.read()[-2000:] if proc.stderr else ''}")
        return {"clone_s": round(t_clone, 2), "clone_to_first_step_s": round(first, 2),
                "load_avg_1min": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="shakespeare-deep")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default 0: the idle cores, as dslm train)")
    ap.add_argument("--clone", action="store_true", help="also time a fresh clone to the first training step")
    args = ap.parse_args()
    res = throughput(args.preset, args.steps, args.warmup, args.threads)
    if args.clone:
        res.update(clone_to_first_step(Path(__file__).resolve().parents[1]))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
