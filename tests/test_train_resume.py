"""A run killed with SIGKILL and resumed repeats the uninterrupted loss curve bit for bit (CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")

# tiny decoder with dropout (so the RNG state matters), grad accumulation (2 micro-batches),
# checkpoints every 4 steps
CONFIG = textwrap.dedent("""
    import torch
    from deepscalelm import ModelConfig
    from deepscalelm.train.config import TrainConfig
    model = ModelConfig(n_layers=3, d_model=16, n_heads=2, seq_len=16, vocab_size=256, dropout=0.1, attn_dropout=0.1)
    def make_cfg(data):
        return TrainConfig(data=data, batch_size=4, micro_batch_size=2, max_steps=12, warmup_steps=3,
                           eval_interval=4, eval_batches=2, ckpt_interval=4, log_interval=1, sample_tokens=0,
                           seed=11, lr=3e-3, threads=1)
""")
# one training process that kills itself with SIGKILL after step KILL_AT
SCRIPT = CONFIG + textwrap.dedent("""
    import os, signal, sys
    torch.set_num_threads(1)
    from deepscalelm.train.loop import train
    out, data, resume, kill_at = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
    def killer(step, rec):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    train(out, model, make_cfg(data), resume=resume, progress=False, log=lambda *a: None, callbacks=[killer])
""")


def _run(out: Path, data: Path, resume: bool, kill_at: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", SCRIPT, str(out), str(data), "1" if resume else "0", str(kill_at)],
                          env=env, capture_output=True, text=True, timeout=300)


def _curve(run: Path) -> list[tuple[int, float]]:
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in recs if "loss" in r] + \
           [(r["step"], r["val_loss"]) for r in recs if "val_loss" in r]


def test_sigkill_then_resume_is_bit_exact(tmp_path):
    from deepscalelm.data.text import builtin_source

    with builtin_source().open() as fh:
        (tmp_path / "data.txt").write_bytes(fh.read(20_000))
    data = tmp_path / "data.txt"

    # the uninterrupted reference runs in this process (same code, one thread as in the children)
    import torch

    from deepscalelm.train.loop import train

    torch.set_num_threads(1)
    ns: dict = {}
    exec(CONFIG, ns)
    train(tmp_path / "full", ns["model"], ns["make_cfg"](str(data)), progress=False, log=lambda *a: None)

    killed = _run(tmp_path / "killed", data, resume=False, kill_at=7)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    ckpts = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir())
    assert ckpts == ["step-0000004"]  # step 8 was never reached
    resumed = _run(tmp_path / "killed", data, resume=True, kill_at=-1)
    assert resumed.returncode == 0, resumed.stderr

    a, b = _curve(tmp_path / "full"), _curve(tmp_path / "killed")
    assert len(a) == 12 + 3 and a == b  # exact float equality, train and validation losses
