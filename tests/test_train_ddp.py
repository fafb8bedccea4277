"""`dslm train` under torchrun with two CPU processes (gloo, DistributedDataParallel) matches one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deepscalelm import ModelConfig
from deepscalelm.train.config import TrainConfig
from deepscalelm.train.loop import train

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _losses(run: Path) -> list[float]:
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if "loss" in r]


def _torchrun(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "deepscalelm.cli", "train", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("fsdp", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_two_process_ddp_equals_single_process(tmp_path, fsdp):
    torch.set_num_threads(1)
    from deepscalelm.data.text import builtin_source

    with builtin_source().open() as fh:
        (tmp_path / "data.txt").write_bytes(fh.read(20_000))
    data = str(tmp_path / "data.txt")
    # no dropout: the two ranks draw different dropout masks than one process would
    model = ModelConfig(n_layers=2, d_model=16, n_heads=2, seq_len=16, vocab_size=256, dropout=0.0, attn_dropout=0.0)
    cfg = TrainConfig(data=data, batch_size=8, max_steps=4, warmup_steps=1, eval_interval=4, eval_batches=2,
                      ckpt_interval=4, log_interval=1, sample_tokens=0, seed=5, lr=3e-3, threads=1)
    train(tmp_path / "single", model, cfg, progress=False, log=lambda *a: None)

    sets = [f"model.{k}={v}" for k, v in (("n_layers", 2), ("d_model", 16), ("n_heads", 2), ("seq_len", 16),
                                          ("dropout", 0.0), ("attn_dropout", 0.0))]
    sets += [f"{k}={v}" for k, v in (("batch_size", 8), ("warmup_steps", 1), ("eval_interval", 4),
                                     ("eval_batches", 2), ("ckpt_interval", 4), ("sample_tokens", 0),
                                     ("seed", 5), ("lr", 3e-3), ("threads", 1))]
    args = ["--preset", "tiny", "--data", data, "--max-steps", "4", "--out", str(tmp_path / "ddp"), "--no-progress"]
    for s in sets:
        args += ["--set", s]
    if fsdp:
        args.append("--fsdp")
    res = _torchrun(args)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 process(es)" in res.stdout + res.stderr
    single, ddp = _losses(tmp_path / "single"), _losses(tmp_path / "ddp")
    assert len(ddp) == len(single) == 4
    assert ddp == pytest.approx(single, rel=1e-5, abs=1e-6)
    # the checkpoint written by the 2-process run resumes in a single process
    from deepscalelm.train import checkpoint as ck

    state = ck.read_state(ck.latest_checkpoint(tmp_path / "ddp"))
    assert state["world_size"] == 2 and state["step"] == 4
