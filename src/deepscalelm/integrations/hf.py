"""`TelemetryCallback`: DSLM telemetry inside a `transformers.Trainer` (needs ``deepscalelm[hf]``).

Every ``every`` optimizer steps the callback records, with `deepscalelm.diagnostics.Telemetry`, the
residual stream's variance and token correlation after every layer, the stream gradient's variance,
attention-logit statistics, weight-gradient norms and the verdicts of `dslm check`, on the first
micro-batch of that step (hooks are attached in ``on_step_begin`` and removed in
``on_pre_optimizer_step``, after the backward pass and gradient clipping). Each record is one line of
a JSONL file; its scalars go into the Trainer's log::

    trainer = Trainer(model=model, args=args, train_dataset=data)
    TelemetryCallback.attach(trainer, every=50, path="run/telemetry.jsonl")
    trainer.train()

``attach`` lets the callback call ``trainer.log`` itself, so the scalars reach every logger
(``report_to``: TensorBoard, W&B, ...) and ``trainer.state.log_history`` on the recorded step. Given
as ``Trainer(..., callbacks=[TelemetryCallback(...)])`` instead, the callback asks the Trainer to log
on recorded steps and adds its scalars to the ``logs`` of ``on_log``, which only the callbacks after
it see (the reporting callbacks of ``report_to`` come before user callbacks): use ``attach`` then.

Steps are counted as the Trainer's ``state.global_step`` after the update (1, 2, ...); step s is
recorded when ``s % every == 0``. Scalars, under ``prefix`` (default ``"dslm/"``):
``var/<module>``, ``corr/<module>``, ``grad_var/<module>`` per stream point (``per_layer=True``),
``var_spread`` (largest over smallest layer variance) and ``verdicts`` (how many fired; their
messages are in the JSONL file and logged as warnings by the ``deepscalelm`` logger).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

try:
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - exercised without transformers only
    raise ImportError("deepscalelm.integrations.hf needs transformers: pip install 'deepscalelm[hf]'") from exc

from ..diagnostics.telemetry import Telemetry
from ._scalars import record_scalars

__all__ = ["TelemetryCallback", "record_scalars"]

log = logging.getLogger("deepscalelm")


def _check_every(every: Any) -> int:
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise ValueError(f"every must be an integer >= 1, got {every!r}")
    return every


class TelemetryCallback(TrainerCallback):
    """Record DSLM telemetry every ``every`` optimizer steps of a `transformers.Trainer`.

    * ``every``: steps between records (>= 1); ``path``: the JSONL file (None: none; written by the
      main process only); ``prefix``, ``per_layer``: how scalars are named (module docstring).
    * ``telemetry_options``: passed to `Telemetry` (``streams``, ``attention``, ``preset``,
      ``max_sequences``, ``weight_norms``, ``tensorboard_dir``); by default the stream points come
      from the model's Hugging Face preset (GPT-2, BERT, Llama family) or the deepscalelm model.
    """

    def __init__(self, every: int = 50, path: str | Path | None = "telemetry.jsonl", *, prefix: str = "dslm/",
                 per_layer: bool = True, **telemetry_options: Any) -> None:
        self.every = _check_every(every)
        self.path = path
        self.prefix = prefix
        self.per_layer = per_layer
        self.options = telemetry_options
        self.telemetry: Telemetry | None = None
        self.records: list[dict[str, Any]] = []  # the scalars of every recorded step, with "step"
        self._trainer: Any = None
        self._pending: dict[str, float] | None = None

    @classmethod
    def attach(cls, trainer: Any, every: int = 50, path: str | Path | None = "telemetry.jsonl",
               **options: Any) -> TelemetryCallback:
        """Create the callback, add it to ``trainer`` and let it log through ``trainer.log``."""
        cb = cls(every, path, **options)
        cb._trainer = trainer
        trainer.add_callback(cb)
        return cb

    # ---------------------------------------------------------------------------- Trainer events
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if model is None:
            raise ValueError("TelemetryCallback: the Trainer passed no model to on_train_begin")
        if self.telemetry is None:
            path = self.path if state.is_world_process_zero else None
            self.telemetry = Telemetry(model, every=self.every, path=path, **self.options)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.telemetry is not None:
            self.telemetry.begin(state.global_step + 1)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.telemetry is None:
            return
        record = self.telemetry.end(state.global_step + 1)
        if record is None:
            return
        self._pending = record_scalars(record, self.prefix, self.per_layer)
        self.records.append({"step": record["step"], **self._pending})
        for message in record["verdicts"]:
            log.warning("step %d: %s", record["step"], message)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self._pending is None:
            return control
        if self._trainer is not None:
            pending, self._pending = self._pending, None
            self._trainer.log(pending)
        else:
            control.should_log = True
        return control

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if self._pending is not None and logs is not None and self._trainer is None:
            logs.update(self._pending)
            self._pending = None

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.telemetry is not None:
            self.telemetry.close()
