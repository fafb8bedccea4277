"""Moment diagnostics for any PyTorch transformer.

* `check(model, batch, ...) -> CheckReport`: one forward + backward pass; per-layer stream variance,
  token correlation, gradient moments, per-weight gradient norms, attention-logit statistics
  (recomputed on the side from q and k), the theory's prediction when a config is known, and
  plain-word verdicts, one of them when measurement and prediction disagree beyond the tolerance
  (`deepscalelm.diagnostics.verdicts` holds the thresholds).
* `Telemetry(model, every=100, path=...)`: the same statistics every N training steps, to JSONL and
  (when installed) TensorBoard.
* Presets: deepscalelm models and every structure-registry family (Hugging Face GPT-2, BERT,
  RoBERTa, Llama, Mistral, Qwen2, Qwen3, ``deepscalelm.register``-ed models; `PRESETS`).
"""

from .core import PROTOCOLS, check
from .report import ROW_FIELDS, CheckReport
from .stats import logit_stats, stream_moments
from .targets import PRESETS, AttentionSpec, StreamPoint, resolve_targets
from .telemetry import Telemetry
from .verdicts import (
    FIT_R2,
    GRAD_RATIO,
    MIN_FIT_LAYERS,
    PRED_CORR_DIFF,
    PRED_VAR_FACTOR,
    RANK_COLLAPSE_CORR,
    SATURATION_LOGIT_VAR,
    VAR_GROWTH_RATIO,
    Verdict,
)

__all__ = ["check", "CheckReport", "Telemetry", "Verdict", "AttentionSpec", "StreamPoint", "PRESETS",
           "PROTOCOLS", "ROW_FIELDS", "resolve_targets", "stream_moments", "logit_stats", "MIN_FIT_LAYERS",
           "FIT_R2", "VAR_GROWTH_RATIO", "GRAD_RATIO", "RANK_COLLAPSE_CORR", "SATURATION_LOGIT_VAR",
           "PRED_VAR_FACTOR", "PRED_CORR_DIFF"]
