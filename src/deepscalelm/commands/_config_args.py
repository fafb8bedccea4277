"""One command-line flag per `ModelConfig` field, shared by the subcommands that build a config."""

from __future__ import annotations

import argparse
import dataclasses
import typing

from ..config import ACTIVATIONS, ARCHS, NORM_TYPES, NORMS, POSITIONS, SCHEMES, ModelConfig

_CHOICES = {"arch": ARCHS, "norm": NORMS, "activation": ACTIVATIONS, "scheme": SCHEMES,
            "depth_unit": ("blocks", "layers"), "corr_schedule": ("exact", "paper"),
            "norm_type": NORM_TYPES, "position": POSITIONS, "qk_norm": (None, "rmsnorm", "layernorm")}


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _optional(kind):
    def parse(text: str):
        return None if text.strip().lower() in ("none", "") else kind(text)
    parse.__name__ = kind.__name__
    return parse


def add_config_arguments(parser: argparse.ArgumentParser, defaults: ModelConfig | None = None) -> None:
    """Add ``--<field>`` (dashes for underscores) for every ModelConfig field."""
    defaults = defaults or ModelConfig()
    hints = typing.get_type_hints(ModelConfig)
    group = parser.add_argument_group("model configuration (ModelConfig fields)")
    for f in dataclasses.fields(ModelConfig):
        hint = hints[f.name]
        default = getattr(defaults, f.name)
        optional = type(None) in typing.get_args(hint)
        base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
        kind = {int: int, float: float, bool: _parse_bool, str: str}[base]
        kwargs = {"type": _optional(kind) if optional else kind, "default": default,
                  "help": f"default: {default}", "metavar": f.name.upper()}
        if f.name in _CHOICES:
            kwargs["choices"] = _CHOICES[f.name]
            kwargs.pop("metavar")
        group.add_argument("--" + f.name.replace("_", "-"), dest=f"cfg_{f.name}", **kwargs)


def config_from_args(args: argparse.Namespace) -> ModelConfig:
    """The ModelConfig the flags describe (ValueError with the field name on bad values)."""
    values = {f.name: getattr(args, f"cfg_{f.name}") for f in dataclasses.fields(ModelConfig)}
    return ModelConfig(**values)
