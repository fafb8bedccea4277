"""PyTorch models for every `ModelConfig` architecture, initialised from a `Scheme`.

`build_model(config, scheme=None, device=None)` builds the model on the meta device, materialises it
on ``device`` and runs ``reset_parameters()`` (which is `apply_scheme`), so parameters are
initialised exactly once. See docs/models.md for the structure contract.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..config import ModelConfig
from ..theory.schemes import Scheme
from .blocks import Attention, FeedForward, Layer, ResidualBlock
from .decoder import GPT
from .encoder import BERT
from .encoder_decoder import EncoderDecoder
from .init import SchemeModel, apply_scheme, resolve_scheme
from .vit import ViT

FAMILIES: dict[str, type[SchemeModel]] = {
    "decoder": GPT, "encoder": BERT, "encoder-decoder": EncoderDecoder, "vit": ViT,
}


def build_model(config: ModelConfig, scheme: Scheme | str | None = None,
                device: torch.device | str | None = None,
                on_meta: Callable[[SchemeModel], None] | None = None) -> SchemeModel:
    """The model of ``config.arch``, initialised from ``scheme`` (default ``config.scheme``) on ``device``.

    ``on_meta(model)`` runs on the parameter-free meta-device model before it is materialised, e.g.
    to shard it with FSDP2 ``fully_shard`` so that each process only ever allocates its own shards.
    """
    if not isinstance(config, ModelConfig):
        raise ValueError(f"config must be a deepscalelm.ModelConfig, got {type(config).__name__}")
    resolved = resolve_scheme(config, scheme)
    with torch.device("meta"):
        model = FAMILIES[config.arch](config)
    if on_meta is not None:
        on_meta(model)
    model.to_empty(device=torch.device("cpu") if device is None else torch.device(device))
    model.scheme = resolved
    model.reset_parameters()
    return model


__all__ = ["build_model", "apply_scheme", "FAMILIES", "GPT", "BERT", "EncoderDecoder", "ViT",
           "SchemeModel", "ResidualBlock", "Attention", "FeedForward", "Layer"]
