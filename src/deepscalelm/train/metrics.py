"""Where training metrics go: ``metrics.jsonl`` (always), ``metrics.csv``, TensorBoard and Weights & Biases.

* ``metrics.jsonl``: one JSON record per line as it happens (training steps, evaluations, skipped
  steps), the source of truth; on resume, records after the checkpoint's step are dropped.
* ``metrics.csv``: the same records, one row per step (a training step and the evaluation at that
  step share a row), columns in first-seen order; rewritten from the JSONL after every evaluation
  and when the run ends, so it always agrees with it.
* TensorBoard scalars under ``tb/`` when `tensorboard` is installed.
* Weights & Biases when ``TrainConfig.wandb`` is set (``--wandb``): `wandb` is imported only then
  (``pip install wandb``). The run id is kept in ``wandb_id.txt`` so a resumed run continues the
  same W&B run. ``WANDB_MODE=offline`` (or ``disabled``) and the other ``WANDB_*`` variables apply
  as usual; files go to ``<run>/wandb/``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

from ..errors import DSLMError

logger = logging.getLogger(__name__)
WANDB_ID_FILE = "wandb_id.txt"


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (lines cut by a kill are skipped)."""
    out: list[dict[str, Any]] = []
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "step" in rec:
            out.append(rec)
    return out


def write_csv(jsonl: Path, csv_path: Path) -> None:
    """Rewrite `csv_path` from `jsonl`: one row per step, the union of the records' keys as columns."""
    rows: dict[int, dict[str, Any]] = {}
    columns: dict[str, None] = {"step": None}
    for rec in read_records(jsonl):
        rows.setdefault(int(rec["step"]), {}).update(rec)
        columns.update(dict.fromkeys(rec))
    tmp = csv_path.with_name(f".{csv_path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns), restval="")
        w.writeheader()
        for step in sorted(rows):
            w.writerow({k: ("" if v is None else v) for k, v in rows[step].items()})
    os.replace(tmp, csv_path)


def require_wandb() -> Any:
    """The `wandb` module, or `DSLMError` saying how to install it."""
    try:
        import wandb
    except ImportError:
        raise DSLMError("the Weights & Biases logger (--wandb) needs the wandb package: pip install wandb") from None
    return wandb


def open_wandb(run_dir: Path, project: str, config: dict[str, Any]) -> Any:
    """A W&B run for `run_dir` (resumed when the directory already has one); needs `wandb`."""
    wandb = require_wandb()
    id_file = run_dir / WANDB_ID_FILE
    run_id = id_file.read_text(encoding="utf-8").strip() if id_file.is_file() else uuid.uuid4().hex[:12]
    id_file.write_text(run_id + "\n", encoding="utf-8")
    return wandb.init(project=project, name=run_dir.name, id=run_id, resume="allow", dir=str(run_dir),
                      config=config)


class Metrics:
    """The metric sinks of one run (all inactive on ranks other than 0: pass ``enabled=False``)."""

    def __init__(self, run_dir: Path, enabled: bool, resume_step: int | None, *, wandb_project: str | None = None,
                 config: dict[str, Any] | None = None) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.csv_path = run_dir / "metrics.csv"
        self.fh = None
        self.tb = None
        self.wandb = None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            # drop records written after the checkpoint we resume from: the curve continues cleanly
            keep = [json.dumps(r) for r in read_records(self.path) if r["step"] <= resume_step]
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(k + "\n" for k in keep), encoding="utf-8")
            os.replace(tmp, self.path)
        if wandb_project is not None:
            self.wandb = open_wandb(run_dir, wandb_project, config or {})
        self.fh = open(self.path, "a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"))
        except Exception:  # tensorboard not installed (optional extra)
            logger.debug("tensorboard is not installed: no TensorBoard scalars")
            self.tb = None

    def log(self, record: dict[str, Any]) -> None:
        """Append one record (``step`` plus metrics) to every sink."""
        if not self.enabled or self.fh is None:
            return
        self.fh.write(json.dumps(record) + "\n")
        self.fh.flush()
        scalars = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))
                   and not isinstance(v, bool)}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, record["step"])
        if self.wandb is not None:
            self.wandb.log(scalars, step=int(record["step"]))
        if any(k.startswith("val_") for k in record):
            write_csv(self.path, self.csv_path)

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            write_csv(self.path, self.csv_path)
            self.fh = None
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


__all__ = ["Metrics", "write_csv", "read_records", "open_wandb", "require_wandb"]
