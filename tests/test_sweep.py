"""dslm sweep: the grid runs through the training loop, resumes, and draws the transfer plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deepscalelm import ModelConfig
from deepscalelm.cli import main
from deepscalelm.errors import DSLMError
from deepscalelm.train import TrainConfig
from deepscalelm.train.sweep import SweepRun, best_lrs, load_sweep, sweep

MODEL = ModelConfig(n_layers=2, d_model=16, n_heads=2, seq_len=16, dropout=0.0, attn_dropout=0.0)
TRAIN = TrainConfig(batch_size=4, max_steps=2, warmup_steps=0, eval_batches=1, threads=1)


def test_grid_resume_and_plot(tmp_path: Path) -> None:
    seen: list[str] = []
    runs = sweep(MODEL, TRAIN, tmp_path, lrs=[1e-3, 1e-2], depths=[1, 2], log=seen.append)
    assert len(runs) == 4 and len(seen) == 4
    assert {(r.value, r.lr) for r in runs} == {(1, 1e-3), (1, 1e-2), (2, 1e-3), (2, 1e-2)}
    assert all(r.val_loss is not None and r.val_loss > 0 and r.steps == 2 for r in runs)
    assert (tmp_path / "transfer.png").stat().st_size > 1000
    data = json.loads((tmp_path / "sweep.json").read_text())
    assert set(data["best"]) == {"1", "2"}
    # a rerun with one more lr trains only the new runs
    seen.clear()
    runs2 = sweep(MODEL, TRAIN, tmp_path, lrs=[1e-3, 1e-2, 3e-3], depths=[1, 2], log=seen.append)
    assert len(runs2) == 6 and len(seen) == 2 and len(load_sweep(tmp_path)) == 6
    with pytest.raises(DSLMError, match="another config"):
        sweep(MODEL.replace(d_model=32), TRAIN, tmp_path, lrs=[1e-3], depths=[1])


def test_best_lr_counts_divergence_as_worst() -> None:
    runs = [SweepRun("depth", 2, 1e-3, 0, 2.0, 2.1, 5, 1.0, "a"),
            SweepRun("depth", 2, 1e-2, 0, None, None, -1, 1.0, "b"),
            SweepRun("depth", 8, 1e-2, 0, None, None, -1, 1.0, "c")]
    best = best_lrs(runs)
    assert best["2"] == {"lr": 1e-3, "val_loss": 2.0}
    assert best["8"]["val_loss"] is None


def test_bad_grids() -> None:
    with pytest.raises(ValueError, match="exactly one of depths or widths"):
        sweep(MODEL, TRAIN, "unused", lrs=[1e-3])
    with pytest.raises(ValueError, match="lrs must be positive"):
        sweep(MODEL, TRAIN, "unused", lrs=[-1.0], depths=[2])


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["sweep", "--preset", "tiny", "--set", "model.n_layers=1", "--set", "model.d_model=16",
               "--set", "train.threads=1", "--max-steps", "2", "--depths", "1", "--lrs", "1e-3,1e-2",
               "--parametrization", "dslm", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "best learning rate per depth" in out and "transfer.png" in out
