"""Memory estimate of a training run, checked before anything is allocated.

A config such as ``--n-layers 100000000`` or ``--d-model 1048576`` would otherwise spend minutes
building a model and then die with a MemoryError (or a failed multi-terabyte allocation). The
estimate is arithmetic on `ModelConfig` (no model is built), so the refusal takes milliseconds.

Counting (fp32 training with AdamW, bytes per process):

* parameters ``P`` (see `param_count`): 4 B for the weight, 4 B for its gradient and 8 B for the
  two AdamW moments, so ``16 P`` (divided by the number of processes under FSDP);
* activations kept for the backward pass, a lower bound: per layer and token, 4 B times
  ``8 d + 2 d_ff + 2 h L`` (the block inputs, q/k/v/output, the FFN hidden state before and after
  the activation, attention scores and probabilities), for ``micro_batch * L`` tokens;
  with activation checkpointing only the layer inputs (``4 d`` B per layer and token) plus one layer.

The estimate is meant to refuse runs that cannot fit at all, not to predict peak memory exactly:
the allocator, the framework and the data loader need more.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..config import ModelConfig
from ..errors import DSLMError

#: bytes per parameter for fp32 weights + gradients + the two AdamW moments
BYTES_PER_PARAM = 16


def _attention(c: ModelConfig) -> int:
    d, kv = c.d_model, c.kv_heads * c.d_head
    bias = (2 * d + 2 * kv) if c.bias else 0
    return 2 * d * d + 2 * d * kv + bias


def _ffn(c: ModelConfig) -> int:
    d, f = c.d_model, c.ffn_dim
    mats = 3 if c.gated else 2
    bias = ((mats - 1) * f + d) if c.bias else 0
    return mats * d * f + bias


def param_count(c: ModelConfig) -> int:
    """Approximate number of trainable parameters of the model `c` describes (within a few percent).

    Counts the attention (q/o full width, k/v of ``n_kv_heads``) and feed-forward matrices (three
    for gated activations) with their biases, two norms per layer (gain, plus shift for LayerNorm),
    cross-attention in the decoder of an encoder-decoder, the token/position embeddings, and the
    output head when not tied (the ViT patch embedding and class head instead of the vocabulary).
    """
    d = c.d_model
    norm = d if c.norm_type == "rmsnorm" else 2 * d  # gain (and shift for LayerNorm)
    layer = _attention(c) + _ffn(c) + 2 * norm
    total = c.n_layers * layer
    if c.arch == "encoder-decoder":
        total += c.decoder_layers * (layer + _attention(c) + norm)
    if c.arch == "vit":
        total += c.channels * c.patch_size ** 2 * d + d + c.n_classes * (d + 1)
    else:
        total += c.vocab_size * d * (1 if c.tie_embeddings else 2)
    if c.position == "learned":
        total += c.seq_len * d
    return total


def activation_bytes(c: ModelConfig, micro_batch: int, checkpointing: bool) -> int:
    """Lower bound of the activation memory (bytes) of one forward/backward of `micro_batch` sequences."""
    layers = c.n_layers + (c.decoder_layers if c.arch == "encoder-decoder" else 0)
    tokens = micro_batch * c.seq_len
    per_layer = 4 * tokens * (8 * c.d_model + 2 * c.ffn_dim + 2 * c.n_heads * c.seq_len)
    if checkpointing:
        return 4 * tokens * c.d_model * layers + per_layer
    return per_layer * layers


def train_bytes(c: ModelConfig, micro_batch: int, *, checkpointing: bool = False, shards: int = 1) -> int:
    """Estimated bytes one training process needs (parameters, gradients, AdamW state, activations)."""
    return BYTES_PER_PARAM * param_count(c) // max(1, shards) + activation_bytes(c, micro_batch, checkpointing)


def _cgroup_free() -> int | None:
    """Bytes left under a cgroup v2 memory limit, or None when there is no limit."""
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((root / "memory.current").read_text().strip())
    except (OSError, ValueError):
        return None


def available_bytes(device_type: str = "cpu", device_index: int | None = None) -> int | None:
    """Free memory in bytes: the GPU's free memory, or MemAvailable of the host (lowered by a cgroup
    limit); None when it cannot be told."""
    if device_type == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(device_index)[0])
    free = None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
                    break
    except OSError:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            free = None
    cg = _cgroup_free()
    if cg is not None:
        free = cg if free is None else min(free, cg)
    return free


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def check_memory(c: ModelConfig, micro_batch: int, *, device_type: str = "cpu", device_index: int | None = None,
                 checkpointing: bool = False, shards: int = 1, processes_per_host: int = 1,
                 available: int | None = None) -> int:
    """Raise DSLMError when the run cannot fit in the free memory; return the estimate (bytes per process).

    `processes_per_host` processes share the host memory on CPU (one GPU each on CUDA).
    `available` overrides the measured free memory (for tests).
    """
    need = train_bytes(c, micro_batch, checkpointing=checkpointing, shards=shards)
    free = available if available is not None else available_bytes(device_type, device_index)
    share = processes_per_host if device_type == "cpu" else 1
    if free is not None and need * share > free:
        n = param_count(c)
        raise DSLMError(
            f"the model needs about {_size(need * share)} to train ({n:.3g} parameters x {BYTES_PER_PARAM} B for "
            f"weights, gradients and AdamW moments, plus activations of {micro_batch} x {c.seq_len} tokens"
            f"{f', {share} processes' if share > 1 else ''}), but only {_size(free)} is free on {device_type}: "
            f"reduce n_layers (now {c.n_layers}), d_model (now {c.d_model}) or the batch size")
    return need


__all__ = ["param_count", "activation_bytes", "train_bytes", "available_bytes", "check_memory", "BYTES_PER_PARAM"]
