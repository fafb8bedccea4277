"""Closed-form signal propagation for transformers: pure Python, no torch.

* `Signal`, `Grad`: moment records (mean/var/token correlation; gradient var/correlation).
* `components`: Linear, Dropout, ReLU, GeLU, LayerNorm, Softmax, Attention, Embedding (the paper's Table 1).
* `blocks`: FFN block, multi-head attention block, residual merge (blocks composed from the paper's Table 1).
* `predict(config) -> Trajectory`: whole-model moments per sublayer (the paper's model-level analysis).
* `schemes`: dslm, xavier, normal, gpt2, deepnet (the paper's DeepScaleLM scheme; the authors' Xavier baseline).
"""

from typing import Any

from .moments import Grad, Signal
from .schemes import Scheme, get_scheme

__all__ = ["Signal", "Grad", "Scheme", "get_scheme", "predict", "components", "blocks", "schemes"]


def __getattr__(name: str) -> Any:
    if name == "predict":
        from .model import predict

        return predict
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
