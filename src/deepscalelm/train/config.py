"""Training configuration: `TrainConfig`, named presets and loading from YAML/TOML/JSON files.

A run is described by two dataclasses, the model (`deepscalelm.ModelConfig`) and the training
procedure (`TrainConfig`). A config file holds ``{"model": {...}, "train": {...}}`` (or flat keys,
routed to whichever dataclass has the field); ``--set key=value`` / ``--set model.key=value``
overrides single fields, values parsed as JSON when possible (``--set lr=3e-4``,
``--set model.norm=post``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import DictConfig, ModelConfig
from ..errors import DSLMError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DECAYS = ("cosine", "linear", "constant")
ON_NAN = ("stop", "skip")
#: optimiser parametrisations (`deepscalelm.optim`): one lr for all, or depth-aware block rates
PARAMETRIZATIONS = ("standard", "dslm", "completep")


@dataclass(frozen=True)
class TrainConfig(DictConfig):
    """How to train. Units: steps are optimizer steps; ``batch_size`` counts sequences (or images)
    per optimizer step over all processes; learning rates are per step for AdamW.

    * ``data``: None = the built-in Tiny Shakespeare; else a text file, a directory of text files,
      a directory with ``*train*``/``*valid*``/``*test*`` files (Penn Treebank), or for ``vit`` the
      Fashion-MNIST IDX directory.
    * ``objective``: ``auto`` (decoder→causal, encoder→mlm, encoder-decoder→span, vit→image).
    * ``micro_batch_size``: sequences per forward pass per process (None = ``batch_size / world``);
      gradient accumulation steps = batch_size / (micro_batch_size * world_size).
    * ``warmup_steps`` linear warm-up from 0, then ``decay`` to ``min_lr_ratio * lr`` at ``max_steps``.
    * ``grad_clip``: max global L2 norm of the gradient (0 = off).
    * ``precision``: ``auto`` = bf16 autocast on a GPU that supports it, fp32 on CPU.
    * ``parametrization``: ``standard`` (one lr for every parameter) or ``dslm`` (rates of the residual
      blocks' parameters divided by the stack's effective depth relative to a 2-layer model, so a
      learning rate transfers across depth) or ``completep`` (CompleteP's rule for the ``completep``
      scheme); see `deepscalelm.optim`.
    * ``on_nan``: ``stop`` (report and stop, keeping the last good checkpoint) or ``skip`` the step.
    * ``tokenizer``: ``byte``, ``word`` or ``bpe`` (trained on the training split), or the path of an
      existing Hugging Face ``tokenizer.json`` (GPT-2 or Llama style), used as it is.
    * ``wandb``: also log to Weights & Biases (project ``wandb_project``; needs ``pip install wandb``).
    * ``max_nan_skips``: with ``on_nan="skip"``, the most consecutive steps that may be skipped; one
      more non-finite step stops the run with an error (a run whose loss stays non-finite never recovers).
    * ``threads``: torch CPU threads per process; 0 = automatic when the run is created (the cores not
      already busy by the 1-minute load average, at least 1, at most torch's default) and then stored
      with the run, so a resumed run computes with the same thread count (needed for bit-exact resume).
    * ``sample_prompt``: the text the end-of-run sample continues; None (default) = "ROMEO:" on the
      built-in Tiny Shakespeare, else the start of the first non-empty line of the training text (at
      most 20 characters, cut at a space), fixed when the run is created and stored with it.
    """

    data: str | None = None
    objective: str = "auto"
    tokenizer: str = "byte"
    bpe_vocab_size: int = 1024
    val_fraction: float = 0.1
    mask_prob: float = 0.15
    span_density: float = 0.15
    span_mean_len: float = 3.0
    batch_size: int = 16
    micro_batch_size: int | None = None
    max_steps: int = 300
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 30
    decay: str = "cosine"
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    seed: int = 1234
    precision: str = "auto"
    device: str = "auto"
    threads: int = 0
    compile: bool = False
    activation_checkpointing: bool = False
    fsdp: bool = False
    on_nan: str = "stop"
    max_nan_skips: int = 5
    parametrization: str = "standard"
    eval_interval: int = 100
    eval_batches: int = 20
    ckpt_interval: int = 100
    keep_checkpoints: int = 2
    log_interval: int = 10
    sample_tokens: int = 300
    sample_prompt: str | None = None
    temperature: float = 0.8
    top_k: int | None = 40
    wandb: bool = False
    wandb_project: str = "deepscalelm"

    def __post_init__(self) -> None:
        from ..data.objectives import OBJECTIVES
        from ..data.tokenizer import TOKENIZERS

        def pos_int(name: str, lo: int = 1) -> None:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")

        def choice(name: str, options: tuple[str, ...]) -> None:
            if getattr(self, name) not in options:
                raise ValueError(f"{name} must be one of {options}, got {getattr(self, name)!r}")

        def num(name: str, lo: float, hi: float = math.inf) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (lo <= v <= hi) or not math.isfinite(v):
                raise ValueError(f"{name} must be a number in [{lo}, {hi}], got {v!r}")

        choice("objective", ("auto",) + OBJECTIVES)
        if not isinstance(self.tokenizer, str) or (self.tokenizer not in TOKENIZERS
                                                   and not self.tokenizer.endswith(".json")):
            raise ValueError(f"tokenizer must be one of {TOKENIZERS} or the path of a Hugging Face "
                             f"tokenizer.json file, got {self.tokenizer!r}")
        if not isinstance(self.wandb, bool):
            raise ValueError(f"wandb must be true or false, got {self.wandb!r}")
        if not isinstance(self.wandb_project, str) or not self.wandb_project.strip():
            raise ValueError(f"wandb_project must be a non-empty string, got {self.wandb_project!r}")
        choice("precision", PRECISIONS)
        choice("decay", DECAYS)
        choice("on_nan", ON_NAN)
        choice("parametrization", PARAMETRIZATIONS)
        for name in ("batch_size", "max_steps", "eval_interval", "eval_batches", "ckpt_interval",
                     "keep_checkpoints", "log_interval", "bpe_vocab_size"):
            pos_int(name)
        pos_int("warmup_steps", 0)
        pos_int("sample_tokens", 0)
        pos_int("seed", 0)
        pos_int("threads", 0)
        pos_int("max_nan_skips", 0)
        if self.micro_batch_size is not None:
            pos_int("micro_batch_size")
        if self.top_k is not None:
            pos_int("top_k")
        if self.sample_prompt is not None and not isinstance(self.sample_prompt, str):
            raise ValueError(f"sample_prompt must be a string or None, got {self.sample_prompt!r}")
        num("lr", 0.0)
        num("min_lr_ratio", 0.0, 1.0)
        num("weight_decay", 0.0)
        num("beta1", 0.0, 1.0)
        num("beta2", 0.0, 1.0)
        num("eps", 0.0)
        num("grad_clip", 0.0)
        num("val_fraction", 1e-6, 1 - 1e-6)
        num("temperature", 0.0)
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ValueError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")


#: fields that may differ when a run is resumed (they do not change the computation of a step)
RESUMABLE_CHANGES = frozenset({"max_steps", "eval_interval", "eval_batches", "ckpt_interval",
                               "keep_checkpoints", "log_interval", "sample_tokens", "sample_prompt",
                               "temperature", "top_k", "on_nan", "max_nan_skips", "compile", "device", "data",
                               "threads", "wandb", "wandb_project"})

# --------------------------------------------------------------------------------------- presets
_DEEP = dict(arch="decoder", norm="pre", dropout=0.1, attn_dropout=0.1, scheme="dslm", vocab_size=256)

#: name -> (ModelConfig fields, TrainConfig fields)
PRESETS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # smoke test: seconds on one core
    "tiny": (dict(_DEEP, n_layers=4, d_model=32, n_heads=2, seq_len=32),
             dict(batch_size=8, max_steps=30, warmup_steps=5, eval_interval=10, eval_batches=4,
                  ckpt_interval=10, log_interval=5, sample_tokens=80, lr=2e-3)),
    # the default of `dslm train`: a deep, narrow byte-level DSLM decoder, a few minutes on 2 CPU cores
    "shakespeare-deep": (dict(_DEEP, n_layers=24, d_model=64, n_heads=4, seq_len=64),
                         dict(batch_size=8, max_steps=500, warmup_steps=50, eval_interval=100,
                              eval_batches=8, ckpt_interval=100, lr=2e-3)),
    # word-level Penn Treebank, 192 layers deep as in the paper's very deep models (needs a GPU)
    "ptb-192": (dict(_DEEP, n_layers=192, d_model=256, n_heads=4, seq_len=128, vocab_size=10000),
                dict(tokenizer="word", batch_size=32, max_steps=20000, warmup_steps=1000, lr=5e-4,
                     eval_interval=1000, ckpt_interval=1000, sample_prompt="the")),
    # masked LM with a deep encoder on Tiny Shakespeare
    "shakespeare-mlm": (dict(_DEEP, arch="encoder", n_layers=24, d_model=64, n_heads=4, seq_len=128),
                        dict(batch_size=16, max_steps=300, warmup_steps=30, sample_tokens=0)),
    # span-corruption denoising with an encoder-decoder on Tiny Shakespeare
    "shakespeare-t5": (dict(_DEEP, arch="encoder-decoder", n_layers=12, n_decoder_layers=12,
                            d_model=64, n_heads=4, seq_len=128),
                       dict(batch_size=16, max_steps=300, warmup_steps=30, sample_tokens=0)),
    # a Llama-shaped byte-level decoder: pre-RMSNorm, SwiGLU (d_ff ~ 8/3 d), rotary positions,
    # grouped-query attention (2 K/V heads for 4 query heads), no biases, no dropout, Llama's
    # N(0, 0.02^2) init; about the cost of shakespeare-deep per step
    "llama": (dict(arch="decoder", norm="pre", norm_type="rmsnorm", activation="swiglu", position="rope",
                   n_layers=16, d_model=64, n_heads=4, n_kv_heads=2, d_ff=176, seq_len=64, vocab_size=256,
                   bias=False, dropout=0.0, attn_dropout=0.0, scheme="normal", std=0.02),
              dict(batch_size=8, max_steps=500, warmup_steps=50, eval_interval=100, eval_batches=8,
                   ckpt_interval=100, lr=2e-3)),
    # ViT on Fashion-MNIST (pass --data DIR with the IDX .gz files)
    "fashion-vit": (dict(arch="vit", n_layers=12, d_model=64, n_heads=4, image_size=28, patch_size=4,
                         channels=1, n_classes=10, dropout=0.1, attn_dropout=0.1, scheme="dslm"),
                    dict(batch_size=64, max_steps=500, warmup_steps=50, lr=1e-3, sample_tokens=0)),
}
DEFAULT_PRESET = "shakespeare-deep"


def preset(name: str) -> tuple[ModelConfig, TrainConfig]:
    """The (ModelConfig, TrainConfig) of a named preset."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    m, t = PRESETS[name]
    return ModelConfig(**m), TrainConfig(**t)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a .json, .toml or .yaml/.yml config file into a dict."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DSLMError(f"config file {p} does not exist")
    text = p.read_text(encoding="utf-8")
    suffix = p.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(text)
        elif suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise DSLMError("YAML config files need PyYAML: pip install pyyaml "
                                "(or use a .json/.toml file)") from None
            data = yaml.safe_load(text)
        else:
            raise DSLMError(f"config file {p} must end in .json, .toml, .yaml or .yml")
    except DSLMError:
        raise
    except Exception as exc:  # parse errors of the three formats have no common base class
        raise DSLMError(f"cannot parse config file {p}: {exc}") from None
    if not isinstance(data, dict):
        raise DSLMError(f"config file {p} must hold a mapping at the top level")
    return data


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        low = text.lower()
        if low in ("true", "false"):
            return low == "true"
        if low in ("none", "null"):
            return None
        return text


def apply_overrides(model: ModelConfig, train: TrainConfig, items: Mapping[str, Any]
                    ) -> tuple[ModelConfig, TrainConfig]:
    """Apply ``key -> value`` changes; keys ``model.x``/``train.x`` or bare names of either dataclass."""
    mfields = {f.name for f in dataclasses.fields(ModelConfig)}
    tfields = {f.name for f in dataclasses.fields(TrainConfig)}
    mchg: dict[str, Any] = {}
    tchg: dict[str, Any] = {}
    for key, value in items.items():
        if key.startswith("model."):
            name, target, known = key[6:], mchg, mfields
        elif key.startswith("train."):
            name, target, known = key[6:], tchg, tfields
        elif key in mfields and key in tfields:
            raise ValueError(f"{key!r} is ambiguous: write model.{key} or train.{key}")
        elif key in mfields:
            name, target, known = key, mchg, mfields
        else:
            name, target, known = key, tchg, tfields
        if name not in known:
            raise ValueError(f"unknown config key {key!r}; model keys: {sorted(mfields)}; "
                             f"train keys: {sorted(tfields)}")
        target[name] = value
    return (model.replace(**mchg) if mchg else model), (train.replace(**tchg) if tchg else train)


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["lr=3e-4", "model.norm=post"]`` -> ``{"lr": 0.0003, "model.norm": "post"}``."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = _parse_value(v.strip())
    return out


def resolve(preset_name: str | None = None, config_file: str | None = None,
            overrides: Mapping[str, Any] | None = None) -> tuple[ModelConfig, TrainConfig]:
    """Preset (default `DEFAULT_PRESET`), then the config file, then the overrides."""
    model, train = preset(preset_name or DEFAULT_PRESET)
    if config_file:
        data = read_config_file(config_file)
        flat: dict[str, Any] = {}
        for key, value in data.items():
            if key in ("model", "train"):
                if not isinstance(value, dict):
                    raise DSLMError(f"config file {config_file}: {key!r} must be a mapping of "
                                    f"{'Model' if key == 'model' else 'Train'}Config fields, got {value!r}"[:300])
                flat.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                flat[key] = value
        model, train = apply_overrides(model, train, flat)
    if overrides:
        model, train = apply_overrides(model, train, overrides)
    return model, train


def config_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Human-readable ``key: a -> b`` lines for keys whose values differ."""
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


__all__ = ["TrainConfig", "PRESETS", "DEFAULT_PRESET", "preset", "resolve", "read_config_file",
           "apply_overrides", "parse_set", "config_diff", "RESUMABLE_CHANGES"]
