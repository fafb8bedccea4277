"""`TelemetryCallback` for Lightning (``lightning.pytorch.Trainer``; needs ``deepscalelm[lightning]``).

The Lightning twin of `deepscalelm.integrations.hf.TelemetryCallback`: every ``every`` optimizer
steps, `deepscalelm.diagnostics.Telemetry` records the stream moments, gradient moments,
attention-logit statistics and verdicts of the first micro-batch of that step (hooks attached in
``on_train_batch_start``, removed in ``on_before_optimizer_step``, after the backward pass) into a
JSONL file, and the same scalars as the Hugging Face callback go to every logger of
the Trainer (``logger.log_metrics``) at that step::

    trainer = lightning.pytorch.Trainer(max_steps=1000, callbacks=[TelemetryCallback(every=50,
                                        path="run/telemetry.jsonl", target="model")])

``target``: the attribute of the LightningModule that holds the network (``"model"`` when the module
keeps a Hugging Face or deepscalelm model as ``self.model``); None: the LightningModule itself, whose
submodules must then match a preset or the ``streams`` option. Steps are ``trainer.global_step``
after the update (1, 2, ...); step s is recorded when ``s % every == 0``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

try:
    import lightning.pytorch as pl
except ImportError as exc:  # pragma: no cover - exercised without lightning only
    raise ImportError("deepscalelm.integrations.lightning needs Lightning: pip install 'deepscalelm[lightning]'"
                      ) from exc

from torch import nn

from ..diagnostics.telemetry import Telemetry
from ._scalars import record_scalars

__all__ = ["TelemetryCallback"]

log = logging.getLogger("deepscalelm")


class TelemetryCallback(pl.Callback):
    """Record DSLM telemetry every ``every`` optimizer steps of a Lightning Trainer.

    ``every`` (>= 1), ``path`` (JSONL; None: none; written by global rank 0 only), ``target``
    (module docstring), ``prefix``/``per_layer`` (scalar names) and ``telemetry_options`` (passed to
    `Telemetry`: ``streams``, ``attention``, ``preset``, ``max_sequences``, ...).
    """

    def __init__(self, every: int = 50, path: str | Path | None = "telemetry.jsonl", *, target: str | None = None,
                 prefix: str = "dslm/", per_layer: bool = True, **telemetry_options: Any) -> None:
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        self.every, self.path, self.target = every, path, target
        self.prefix, self.per_layer, self.options = prefix, per_layer, telemetry_options
        self.telemetry: Telemetry | None = None
        self.records: list[dict[str, Any]] = []  # the scalars of every recorded step, with "step"

    def _network(self, pl_module: Any) -> nn.Module:
        if self.target is None:
            return pl_module
        net = getattr(pl_module, self.target, None)
        if not isinstance(net, nn.Module):
            raise ValueError(f"TelemetryCallback: target={self.target!r} is not an nn.Module attribute of "
                             f"{type(pl_module).__name__}")
        return net

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit" and self.telemetry is None:
            path = self.path if trainer.is_global_zero else None
            self.telemetry = Telemetry(self._network(pl_module), every=self.every, path=path, **self.options)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.telemetry is not None and batch_idx % trainer.accumulate_grad_batches == 0:
            self.telemetry.begin(trainer.global_step + 1)

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if self.telemetry is None:
            return
        record = self.telemetry.end(trainer.global_step + 1)
        if record is None:
            return
        scalars = record_scalars(record, self.prefix, self.per_layer)
        self.records.append({"step": record["step"], **scalars})
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=record["step"])
        for message in record["verdicts"]:
            log.warning("step %d: %s", record["step"], message)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.telemetry is not None:
            self.telemetry.close()
