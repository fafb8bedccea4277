"""Downstream fine-tuning of pretrained byte-level encoders/decoders (see `deepscalelm.finetune.api`).

``deepscalelm.finetune.finetune(checkpoint, task, out, FinetuneConfig(...))`` runs the paper's
fine-tuning protocol (learning-rate × seed grid, warm-up and linear decay, weight decay 0.01,
clipping 1.0, best lr on dev, test mean ± std over seeds) and saves regular checkpoints. ``task`` is a
built-in task name or a `TaskData`, e.g. ``deepscalelm.tasks.load_files("train.jsonl", test="test.jsonl")``.
"""

from __future__ import annotations

from .api import (
                  FinetuneConfig,
                  accuracy,
                  check_task_fits,
                  encode_task,
                  evaluate_checkpoint,
                  finetune,
                  load_backbone,
                  load_finetuned,
                  train_one,
)
from .encode import encode_parts, encode_split
from .model import FinetuneModel

__all__ = ["FinetuneConfig", "finetune", "load_backbone", "load_finetuned", "evaluate_checkpoint", "accuracy",
           "train_one", "encode_task", "check_task_fits", "FinetuneModel", "encode_parts", "encode_split"]
