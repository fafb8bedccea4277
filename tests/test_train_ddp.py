"""`dslm train` under torchrun with two CPU processes (gloo): DDP and FSDP2 match one process.

With dropout 0 the training losses and ``val_loss`` of 2 processes equal the single-process ones to
float rounding; the FSDP run (meta-device build, sharded checkpoints) samples at the end on both
ranks, resumes shard-wise with the same world size and exports one safetensors file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deepscalelm import ModelConfig
from deepscalelm.errors import DSLMError
from deepscalelm.train.config import TrainConfig
from deepscalelm.train.loop import evaluate, train
from deepscalelm.train.run import open_run

SRC = str(Path(__file__).resolve().parents[1] / "src")
# warm-up covers every step, so a 2-step run resumed to 4 steps follows the same schedule as 4 steps
MODEL = dict(n_layers=2, d_model=16, n_heads=2, seq_len=16, dropout=0.0, attn_dropout=0.0)
TRAIN = dict(batch_size=8, warmup_steps=4, eval_interval=2, eval_batches=3, ckpt_interval=2, seed=5, lr=3e-3,
             threads=1)


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _curve(run: Path, key: str) -> list[float]:
    return [r[key] for r in _records(run) if key in r]


def _torchrun(out: Path, data: str, *extra: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    args = ["--preset", "tiny", "--data", data, "--out", str(out), "--no-progress", *extra]
    for k, v in MODEL.items():
        args += ["--set", f"model.{k}={v}"]
    for k, v in TRAIN.items():
        args += ["--set", f"{k}={v}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "deepscalelm.cli", "train", *args]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> tuple[str, Path]:
    """(data file, a 4-step single-process run) shared by the tests of this module."""
    torch.set_num_threads(1)
    from deepscalelm.data.text import builtin_source

    tmp = tmp_path_factory.mktemp("single")
    with builtin_source().open() as fh:
        (tmp / "data.txt").write_bytes(fh.read(20_000))
    data = str(tmp / "data.txt")
    model = ModelConfig(vocab_size=256, **MODEL)
    cfg = TrainConfig(data=data, max_steps=4, sample_tokens=0, **TRAIN)
    train(tmp / "single", model, cfg, progress=False, log=lambda *a: None)
    return data, tmp / "single"


def test_two_process_ddp_equals_single_process(tmp_path, single):
    data, ref = single
    res = _torchrun(tmp_path / "ddp", data, "--max-steps", "4", "--set", "sample_tokens=0")
    assert "2 process(es)" in res.stdout + res.stderr
    assert len(_curve(tmp_path / "ddp", "loss")) == 4
    assert _curve(tmp_path / "ddp", "loss") == pytest.approx(_curve(ref, "loss"), rel=1e-5, abs=1e-6)
    # the same global evaluation windows, sums all-reduced: val_loss does not depend on the world size
    assert len(_curve(ref, "val_loss")) == 2
    assert _curve(tmp_path / "ddp", "val_loss") == pytest.approx(_curve(ref, "val_loss"), rel=1e-6)
    from deepscalelm.train import checkpoint as ck

    state = ck.read_state(ck.latest_checkpoint(tmp_path / "ddp"))
    assert state["world_size"] == 2 and state["step"] == 4 and "layout" not in state


def test_two_process_fsdp_samples_checkpoints_shardwise_resumes_and_exports(tmp_path, single):
    from deepscalelm.train import checkpoint as ck
    from deepscalelm.train.sharded import export_model, load_exported

    data, ref = single
    run = tmp_path / "fsdp"
    _torchrun(run, data, "--fsdp", "--max-steps", "2")  # the tiny preset's 80-token sample is on
    first = json.loads((run / "summary.json").read_text())
    prompt = json.loads((run / "run.json").read_text())["train"]["sample_prompt"]  # from the user's --data
    assert first["steps"] == 2 and prompt and first["sample"].startswith(prompt) and len(first["sample"]) > len(prompt)
    state = ck.read_state(ck.latest_checkpoint(run))
    assert state["layout"] == "sharded" and state["world_size"] == 2
    assert {"sharded/__0_0.distcp", "sharded/__1_0.distcp", "sharded/.metadata", "rng.safetensors"} <= set(
        state["files"])
    assert not (ck.latest_checkpoint(run) / "model.safetensors").exists()  # no gathered copy

    res = _torchrun(run, data, "--fsdp", "--resume", "--max-steps", "4")
    assert "resumed from" in res.stdout + res.stderr
    # meta-device build + per-shard init + shard-wise resume = the single-process run
    assert _curve(run, "loss") == pytest.approx(_curve(ref, "loss"), rel=1e-5, abs=1e-6)
    assert _curve(run, "val_loss") == pytest.approx(_curve(ref, "val_loss"), rel=1e-6)

    with pytest.raises(DSLMError, match="sharded over 2 FSDP processes"):
        train(run, None, TrainConfig(max_steps=6), resume=True, explicit_config=False, progress=False,
              log=lambda *a: None)

    # the exported weights, read back in one process, give the run's final val_loss
    out = export_model(run, tmp_path / "model.safetensors")
    model, mcfg = load_exported(out)
    assert mcfg.n_layers == MODEL["n_layers"]
    assert set(model.state_dict()) == set(ck.load_model_state(ck.latest_checkpoint(ref)))
    rd = open_run(run)
    val = evaluate(model, rd.val, "causal", TRAIN["batch_size"], torch.device("cpu"), "fp32", TRAIN["eval_batches"],
                   rd.val_tokens_per_byte)
    assert val["val_loss"] == pytest.approx(_curve(run, "val_loss")[-1], rel=1e-6)


@pytest.mark.parametrize(("world", "sharded", "match"), [(4, True, "same world size"),
                                                        (2, False, "resume it with torchrun --nproc_per_node 2")])
def test_sharded_checkpoint_refuses_other_world_sizes(world, sharded, match):
    from deepscalelm.train.sharded import check_resumable

    state = {"layout": "sharded", "world_size": 2}
    with pytest.raises(DSLMError, match=match):
        check_resumable(Path("ckpt"), state, world, sharded)
    check_resumable(Path("ckpt"), state, 2, True)
    check_resumable(Path("ckpt"), {"world_size": 2}, world, sharded)  # full checkpoints resume anywhere


@pytest.mark.parametrize(("n", "world", "micro"), [(5, 2, 2), (1, 2, 4), (8, 2, 4), (7, 3, 1)])
def test_eval_chunks_cover_each_row_once_with_equal_forward_counts(n, world, micro):
    import numpy as np

    from deepscalelm.train.loop import Dist, _eval_chunks

    batch = {"ids": np.arange(n)[:, None], "labels": np.arange(n)}
    seen, counts = [], set()
    for rank in range(world):
        chunks = list(_eval_chunks(batch, Dist(rank=rank, world=world), micro))
        counts.add(len(chunks))
        assert all(0 < len(c["labels"]) <= micro for c, _ in chunks)
        seen += [int(x) for c, real in chunks if real for x in c["labels"]]
    assert sorted(seen) == list(range(n)) and len(counts) == 1  # FSDP needs the same forwards on every rank
