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


class BoolFlag(argparse.Action):
    """``--name`` / ``--no-name`` for a boolean field; ``--name false`` (or true/yes/no/1/0/on/off) is
    accepted too, for scripts written before ``--no-name`` existed."""

    def __init__(self, option_strings: list[str], dest: str, default: bool | None = None,
                 help: str | None = None) -> None:  # noqa: A002 - argparse's keyword
        opts = []
        for opt in option_strings:
            opts.append(opt)
            if opt.startswith("--"):
                opts.append("--no-" + opt[2:])
        super().__init__(opts, dest, nargs="?", default=default, help=help, metavar="BOOL")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        negated = bool(option_string and option_string.startswith("--no-"))
        if values is None:
            value = not negated
        elif negated:
            raise argparse.ArgumentError(self, f"{option_string} takes no value (got {values!r})")
        else:
            try:
                value = _parse_bool(str(values))
            except argparse.ArgumentTypeError as exc:
                raise argparse.ArgumentError(self, str(exc)) from None
        setattr(namespace, self.dest, value)


def _optional(kind):
    def parse(text: str):
        return None if text.strip().lower() in ("none", "") else kind(text)
    parse.__name__ = kind.__name__
    return parse


def add_config_arguments(parser: argparse.ArgumentParser, defaults: ModelConfig | None = None) -> None:
    """Add ``--<field>`` (dashes for underscores) for every ModelConfig field; boolean fields get
    ``--<field>`` / ``--no-<field>`` (`BoolFlag`)."""
    defaults = defaults or ModelConfig()
    hints = typing.get_type_hints(ModelConfig)
    group = parser.add_argument_group("model configuration (ModelConfig fields)")
    for f in dataclasses.fields(ModelConfig):
        hint = hints[f.name]
        default = getattr(defaults, f.name)
        optional = type(None) in typing.get_args(hint)
        base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
        flag = "--" + f.name.replace("_", "-")
        if base is bool and not optional:
            group.add_argument(flag, dest=f"cfg_{f.name}", action=BoolFlag, default=default,
                               help=f"{flag} or --no-{flag[2:]} ({flag} true/false also works); "
                                    f"default: {'on' if default else 'off'}")
            continue
        kind = {int: int, float: float, bool: _parse_bool, str: str}[base]
        kwargs = {"type": _optional(kind) if optional else kind, "default": default,
                  "help": f"default: {default}", "metavar": f.name.upper()}
        if f.name in _CHOICES:
            kwargs["choices"] = _CHOICES[f.name]
            kwargs.pop("metavar")
        group.add_argument(flag, dest=f"cfg_{f.name}", **kwargs)


#: default of a config flag whose subcommand must tell "given" from "left at its default" (dslm predict --hf)
UNSET = object()


def config_from_args(args: argparse.Namespace) -> ModelConfig:
    """The ModelConfig the flags describe (ValueError with the field name on bad values); flags left
    `UNSET` take the ModelConfig default."""
    default = ModelConfig()
    values = {f.name: getattr(args, f"cfg_{f.name}") for f in dataclasses.fields(ModelConfig)}
    return ModelConfig(**{k: getattr(default, k) if v is UNSET else v for k, v in values.items()})


def float_list(text: str) -> tuple[float, ...]:
    """argparse type: comma-separated numbers, e.g. ``1e-3,3e-3``."""
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def int_list(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated integers, e.g. ``2,8,32``."""
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
