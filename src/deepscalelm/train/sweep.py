"""Learning-rate x depth (or width) sweeps with the package's training loop, and the transfer plot.

``sweep(model, train, out, lrs=..., depths=...)`` trains one run per (depth or width, lr, seed) in
``out/<axis><value>-lr<lr>-s<seed>/`` with `deepscalelm.train.loop.train` (the same step, schedule and
checkpoint as ``dslm train``), writes every result to ``out/sweep.json`` (after each run, so a killed
sweep keeps what finished; a rerun skips the runs already there) and draws ``out/transfer.png``: final
validation loss against learning rate, one curve per depth, the picture of "does the best learning rate
move with depth?". A run that diverges (non-finite loss) is recorded with ``val_loss`` = None.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..config import ModelConfig
from ..errors import DSLMError
from .config import TrainConfig

FILE = "sweep.json"
PLOT = "transfer.png"


@dataclass(frozen=True)
class SweepRun:
    """One finished run: the swept values and its final metrics (losses in nats per token)."""

    axis: str  # "depth" (n_layers) or "width" (d_model)
    value: int
    lr: float
    seed: int
    val_loss: float | None  # None: diverged
    train_loss: float | None
    steps: int
    seconds: float
    run_dir: str


def _keep_last(last: dict[str, Any], _step: int, record: dict[str, Any]) -> None:
    """Training callback: keep the latest logged record of a run in `last`."""
    last.update(record)


def _run_name(axis: str, value: int, lr: float, seed: int) -> str:
    return f"{axis}{value}-lr{lr:g}-s{seed}"


def _configs(model: ModelConfig, train: TrainConfig, axis: str, value: int, lr: float,
             seed: int) -> tuple[ModelConfig, TrainConfig]:
    m = model.replace(n_layers=value) if axis == "depth" else model.replace(d_model=value)
    last = train.max_steps
    t = train.replace(lr=lr, seed=seed, sample_tokens=0, eval_interval=last, ckpt_interval=last, keep_checkpoints=1)
    return m, t


def _check_grid(lrs: Sequence[float], depths: Sequence[int], widths: Sequence[int], seeds: Sequence[int]) -> str:
    if bool(depths) == bool(widths):
        raise ValueError("give exactly one of depths or widths to sweep over")
    if not lrs or any(not (isinstance(x, (int, float)) and math.isfinite(x) and x > 0) for x in lrs):
        raise ValueError(f"lrs must be positive finite numbers, got {list(lrs)!r}")
    for name, vals in (("depths", depths), ("widths", widths), ("seeds", seeds)):
        if any(not isinstance(v, int) or isinstance(v, bool) or v < (0 if name == "seeds" else 1) for v in vals):
            raise ValueError(f"{name} must be positive integers, got {list(vals)!r}")
    return "depth" if depths else "width"


def load_sweep(out: str | Path) -> list[SweepRun]:
    """The runs recorded in ``out/sweep.json`` (empty when there is none)."""
    path = Path(out) / FILE
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
        return [SweepRun(**r) for r in data["runs"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise DSLMError(f"{path} is not a sweep file ({exc}); remove it or choose another --out") from None


def _write(out: Path, model: ModelConfig, train: TrainConfig, runs: list[SweepRun]) -> None:
    data = {"model": model.to_dict(), "train": train.to_dict(), "runs": [asdict(r) for r in runs],
            "best": best_lrs(runs)}
    tmp = out / (FILE + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(out / FILE)


def best_lrs(runs: Sequence[SweepRun]) -> dict[str, dict[str, float | None]]:
    """Per swept value: the lr with the lowest mean val_loss over seeds (diverged runs count as +inf)."""
    table: dict[int, dict[float, list[float]]] = {}
    for r in runs:
        table.setdefault(r.value, {}).setdefault(r.lr, []).append(math.inf if r.val_loss is None else r.val_loss)
    out: dict[str, dict[str, float | None]] = {}
    for value, by_lr in sorted(table.items()):
        lr, losses = min(by_lr.items(), key=lambda kv: sum(kv[1]) / len(kv[1]))
        mean = sum(losses) / len(losses)
        out[str(value)] = {"lr": lr, "val_loss": mean if math.isfinite(mean) else None}
    return out


def sweep(model: ModelConfig, train: TrainConfig, out: str | Path, *, lrs: Sequence[float],
          depths: Sequence[int] = (), widths: Sequence[int] = (), seeds: Sequence[int] = (),
          log: Any = print, plot: bool = True) -> list[SweepRun]:
    """Train the grid ``lrs`` x (``depths`` or ``widths``) x ``seeds`` (default: ``train.seed``).

    Runs already in ``out/sweep.json`` are skipped (the sweep resumes), unless the stored model or
    training config differs, which is refused. Returns every run of the grid.
    """
    from .guard import NonFiniteError
    from .loop import train as train_run

    seeds = list(seeds) or [train.seed]
    axis = _check_grid(lrs, depths, widths, seeds)
    values = list(depths or widths)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done = load_sweep(out)
    if done:
        stored = json.loads((out / FILE).read_text())
        if stored["model"] != model.to_dict() or stored["train"] != train.to_dict():
            raise DSLMError(f"{out / FILE} holds a sweep of another config; choose another --out")
    have = {(r.axis, r.value, r.lr, r.seed) for r in done}
    runs = list(done)
    for value in values:
        for lr in lrs:
            for seed in seeds:
                if (axis, value, float(lr), seed) in have:
                    continue
                m, t = _configs(model, train, axis, value, float(lr), seed)
                run_dir = out / _run_name(axis, value, lr, seed)
                if run_dir.exists():  # left by a sweep killed during this run: start it again
                    shutil.rmtree(run_dir)
                t0 = time.perf_counter()
                last: dict[str, Any] = {}
                try:
                    res = train_run(run_dir, m, t, progress=False, log=lambda _msg: None,
                                    callbacks=[functools.partial(_keep_last, last)])
                    val, tr, steps = res.final.get("val_loss"), last.get("loss"), res.steps
                except NonFiniteError:
                    val, tr, steps = None, None, -1
                r = SweepRun(axis, value, float(lr), seed, val, tr, steps, round(time.perf_counter() - t0, 2),
                             str(run_dir.relative_to(out)))
                runs.append(r)
                _write(out, model, train, runs)
                log(f"{axis} {value:>5}  lr {lr:<8g} seed {seed}: "
                    + (f"val_loss {val:.4f}" if val is not None else "diverged") + f"  ({r.seconds:.0f} s)")
    if plot:
        plot_transfer(runs, out / PLOT, title=f"{model.scheme}, {train.parametrization} parametrization")
    return runs


def plot_transfer(runs: Sequence[SweepRun], path: str | Path, title: str = "") -> Path:
    """Final validation loss against learning rate (log axis), one line per depth or width; the best
    lr of each line is marked. Mean over seeds, the bar spans the seeds' min and max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    from ..plotting import save_figure

    fig, ax = plt.subplots(figsize=(6, 4))
    axis = runs[0].axis if runs else "depth"
    for value in sorted({r.value for r in runs}):
        by_lr: dict[float, list[float]] = {}
        for r in runs:
            if r.value == value and r.val_loss is not None:
                by_lr.setdefault(r.lr, []).append(r.val_loss)
        if not by_lr:
            continue
        xs = sorted(by_lr)
        mean = [sum(by_lr[x]) / len(by_lr[x]) for x in xs]
        lo = [m - min(by_lr[x]) for m, x in zip(mean, xs, strict=True)]
        hi = [max(by_lr[x]) - m for m, x in zip(mean, xs, strict=True)]
        line = ax.errorbar(xs, mean, yerr=[lo, hi], marker="o", ms=4, capsize=2,
                           label=f"{'layers' if axis == 'depth' else 'd_model'} {value}")
        i = min(range(len(xs)), key=lambda j: mean[j])
        ax.plot([xs[i]], [mean[i]], "*", ms=12, color=line[0].get_color())
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # decade labels only: minor ones overlap
    ax.set_xlabel("learning rate")
    ax.set_ylabel("final validation loss (nats/token)")
    ax.set_title(title or "learning-rate transfer")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


__all__ = ["SweepRun", "sweep", "load_sweep", "best_lrs", "plot_transfer"]
