"""`Telemetry`: the statistics of `check`, recorded every N training steps inside any loop.

On a recorded step, hooks are attached before the forward pass and removed after the backward
pass: stream moments come from forward hooks, stream-gradient moments from tensor hooks fired by the
caller's own ``loss.backward()``, attention-logit statistics from a no-grad side computation on the
detached q/k projections (on at most ``max_sequences`` sequences), weight-gradient norms from
``p.grad`` after the backward. Other steps run with no hook at all, so the cost is that of one
recorded step divided by ``every`` (measured in benchmarks/telemetry_overhead.py).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .core import build_rows
from .recorder import Recorder
from .report import _clean
from .targets import AttentionSpec, resolve_targets
from .verdicts import judge

__all__ = ["Telemetry"]


class Telemetry:
    """Record per-layer statistics every ``every`` steps to JSONL (and TensorBoard when installed).

    Usage inside a loop::

        tel = Telemetry(model, every=100, path="run/telemetry.jsonl")
        for step, batch in enumerate(loader):
            with tel.step(step):          # hooks only when step % every == 0
                loss = model.loss(batch)
                loss.backward()
            optimizer.step(); optimizer.zero_grad()
        tel.close()

    or ``tel.begin(step)`` before the forward and ``tel.end(step, loss=...)`` after the backward.
    Each JSONL line: ``{"step", "time", "loss", "rows": [...], "attention": [...],
    "weights": {name: grad_norm}, "verdicts": [message, ...]}`` with the row fields of
    `deepscalelm.diagnostics.report` (no ``pred_*``). With gradient accumulation only the first
    micro-batch's activations are recorded; weight-gradient norms are those of the accumulated
    ``.grad`` at ``end``. ``tensorboard_dir``: scalars ``<stat>/<module name>`` via
    ``torch.utils.tensorboard`` (needs the optional ``tensorboard`` package; `ImportError` otherwise).
    """

    def __init__(self, model: nn.Module, every: int = 100, path: str | Path | None = "telemetry.jsonl",
                 tensorboard_dir: str | Path | None = None, *, streams: str | Sequence[str] | None = None,
                 attention: str | Sequence[str] | Sequence[AttentionSpec] | None = None,
                 preset: str | None = None, causal: bool | None = None, max_sequences: int = 4,
                 weight_norms: bool = True) -> None:
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        self.model = model
        self.every = every
        self.points, self.specs, self.preset = resolve_targets(model, streams, attention, preset, causal)
        for s in self.specs:
            if s.unsupported is not None:
                warnings.warn(s.unsupported, stacklevel=2)
        self._rec = Recorder(model, self.points, self.specs, grad_hooks=True, keep_outputs=False,
                             max_sequences=max_sequences)
        self.weight_norms = weight_norms
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = None
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter  # ImportError without tensorboard

            self._writer = SummaryWriter(str(tensorboard_dir))
        self._armed: int | None = None
        self.last: dict[str, Any] | None = None

    def should_record(self, step: int) -> bool:
        return step % self.every == 0

    def begin(self, step: int) -> bool:
        """Attach the hooks when ``step`` is a recorded step (call before the forward pass)."""
        if self._armed is not None:
            self._rec.detach()
            self._rec.reset()
            self._armed = None
        if not self.should_record(step):
            return False
        self._rec.reset()
        self._rec.attach()
        self._armed = step
        return True

    def end(self, step: int, loss: float | torch.Tensor | None = None) -> dict[str, Any] | None:
        """After the backward pass: detach, write the record of ``step`` and return it (None when
        the step was not recorded)."""
        if self._armed is None:
            return None
        self._rec.detach()
        self._armed = None
        try:
            rows, attn = build_rows(self.points, self.specs, self._rec)
        finally:
            pass
        for r in rows:
            for k in ("pred_var", "pred_corr", "pred_grad_var", "pred_grad_corr"):
                r.pop(k, None)
        weights = {}
        if self.weight_norms:
            with torch.no_grad():
                for n, p in self.model.named_parameters():
                    if p.grad is not None:
                        weights[n] = float(p.grad.detach().norm())
        if isinstance(loss, torch.Tensor):
            loss = float(loss.detach())
        record = {"step": step, "time": time.time(), "loss": loss, "rows": rows, "attention": attn,
                  "weights": weights, "verdicts": [v.message for v in judge(rows, attn)]}
        self._rec.reset()
        self.last = record
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(_clean(record), default=str) + "\n")
        if self._writer is not None:
            self._tensorboard(record)
        return record

    @contextmanager
    def step(self, step: int) -> Iterator[bool]:
        """Context manager around forward + backward of ``step``; yields whether it is recorded."""
        armed = self.begin(step)
        try:
            yield armed
        except BaseException:
            if self._armed is not None:
                self._rec.detach()
                self._rec.reset()
                self._armed = None
            raise
        self.end(step)

    def _tensorboard(self, record: dict[str, Any]) -> None:
        w, step = self._writer, record["step"]
        assert w is not None  # called only while a writer is open
        for r in record["rows"]:
            for key in ("var", "corr", "grad_var", "logit_var", "entropy"):
                v = r.get(key)
                if v is not None and math.isfinite(v):
                    w.add_scalar(f"{key}/{r['name']}", v, step)
        if record["loss"] is not None and math.isfinite(record["loss"]):
            w.add_scalar("loss", record["loss"], step)
        w.flush()

    def close(self) -> None:
        """Detach any hooks and close the TensorBoard writer."""
        if self._armed is not None:
            self._rec.detach()
            self._armed = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> Telemetry:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
