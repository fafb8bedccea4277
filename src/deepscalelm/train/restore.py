"""Load a trained model for sampling or evaluation from a self-contained checkpoint directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ModelConfig
from ..data.tokenizer import Tokenizer, load_tokenizer
from ..errors import DSLMError
from . import checkpoint as ck
from .config import TrainConfig


def load_for_inference(path: str | Path, device: str = "cpu", factory: Any = None, threads: int = 0
                       ) -> tuple[nn.Module, ModelConfig, TrainConfig, Tokenizer | None, Path, dict]:
    """(model in eval mode, model config, train config, tokenizer or None, checkpoint dir, state).

    On CPU, ``threads`` torch threads are used (0: the idle cores, see `loop.auto_threads`). Sharded
    (FSDP) checkpoints are read too, in this one process.
    """
    ckpt = ck.resolve_checkpoint(path)
    state = ck.read_state(ckpt)
    try:
        mcfg = ModelConfig.from_dict(state["model_config"])
        tcfg = TrainConfig.from_dict(state["train_config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DSLMError(f"checkpoint {ckpt}: bad config in state.json ({exc})") from None
    if factory is None:
        from ..models import build_model as factory
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DSLMError(f"device {device!r} requested but CUDA is not available")
    if not device.startswith("cuda"):
        from .loop import auto_threads

        torch.set_num_threads(threads or auto_threads())
    torch.manual_seed(0)
    model = factory(mcfg).to(device)
    from .sharded import is_sharded, read_model_weights

    if is_sharded(state):  # an FSDP checkpoint: its shards are assembled in this process
        read_model_weights(ckpt, model)
    else:
        sd = ck.load_model_state(ckpt, model.state_dict())
        model.load_state_dict(sd)
    model.eval()
    tok = load_tokenizer(str(ckpt / "tokenizer.json")) if (ckpt / "tokenizer.json").is_file() else None
    return model, mcfg, tcfg, tok, ckpt, state


__all__ = ["load_for_inference"]
