"""``dslm predict``: the per-layer moment trajectory of a model, from the closed-form theory."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

from ..config import ModelConfig
from ._config_args import UNSET, add_config_arguments, config_from_args
from ._output import write_tables

COLUMNS = ("stack", "layer", "block", "var", "corr", "grad_var", "grad_corr", "block_var")


#: what each column means (printed under the table's help and in docs/theory.md)
COLUMN_HELP = (
    "Columns: var, corr = variance and token-to-token correlation of the residual stream after the "
    "sublayer's merge; grad_var, grad_corr = the same for d(output)/d(stream), seeded at the final hidden "
    "state with unit variance and zero correlation (the paper's protocol); block_var = variance of the "
    "sublayer's own output F (attention or FFN, after its dropout, before the merge x <- lambda*x + "
    "beta*F), empty for the embedding and the final norm. Layer 0 is the embedding output.")


def register(sub: argparse._SubParsersAction) -> None:
    from ..config import SCHEMES

    p = sub.add_parser("predict", help="predict per-layer forward/backward moments (no torch)",
                       description="Closed-form moments of the residual stream after every sublayer: "
                                   "forward variance and token correlation, gradient variance and "
                                   "correlation (unit-variance gradient seeded at the output).",
                       epilog=COLUMN_HELP)
    p.add_argument("--json", metavar="FILE", help="write the trajectory as JSON ('-' for stdout)")
    p.add_argument("--csv", metavar="FILE", help="write the trajectory as CSV ('-' for stdout)")
    p.add_argument("--plot", metavar="FILE.png", help="draw variance, correlation and gradient "
                                                      "variance against the layer")
    p.add_argument("--compare-scheme", metavar="SCHEME", action="append", default=[], choices=SCHEMES,
                   help="with --plot: also draw the prediction of the same model under this scheme "
                        f"(repeatable; one of {', '.join(SCHEMES)}), e.g. DSLM beside a xavier baseline")
    p.add_argument("--positional", choices=("auto", "on", "off"), default="auto",
                   help="causal stacks: position-resolved backward pass (on), pooled (off), or "
                        "position-resolved when cheap (auto, default)")
    p.add_argument("--every", type=int, default=0, metavar="K",
                   help="table: every K-th layer with all its sublayers, plus the embedding, layer 1 and the "
                        "last layer (default: K such that about 15 layers are shown)")
    p.add_argument("--hf", metavar="DIR", help="predict the Hugging Face model saved in DIR (its config.json; "
                                               "a folder written by dslm apply is predicted with its scheme); "
                                               "config flags given explicitly override it")
    add_config_arguments(p)
    # explicit flags are told apart from defaults (needed to override an --hf config)
    p.set_defaults(func=run, **{f"cfg_{f.name}": _UNSET for f in dataclasses.fields(ModelConfig)})


_UNSET = UNSET


def _explicit(args: argparse.Namespace) -> dict:
    """Config fields given on the command line; the others are reset to their defaults in ``args``."""
    given = {}
    defaults = ModelConfig()
    for f in dataclasses.fields(ModelConfig):
        value = getattr(args, f"cfg_{f.name}")
        if value is _UNSET:
            setattr(args, f"cfg_{f.name}", getattr(defaults, f.name))
        else:
            given[f.name] = value
    return given


def config_from_hf_dir(folder: str, overrides: dict) -> ModelConfig:
    """ModelConfig of a save_pretrained folder's config.json (with a recorded dslm apply scheme)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ValueError(f"--hf {folder} has no config.json (expected a save_pretrained folder)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"--hf {folder}: config.json is not valid JSON ({exc})") from None
    applied = data.get("deepscalelm_scheme") or {}
    fields = {"scheme": applied["scheme"], **applied.get("options", {})} if applied else {}
    return ModelConfig.from_hf(data, **{**fields, **overrides})


def fixed(v: float, digits: int = 3) -> str:
    """``v`` with ``digits`` decimals, and "0.000" (not "-0.000") for values that round to zero."""
    text = f"{v:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0.0 else text


def format_table(records: list[dict], every: int = 0) -> str:
    """Fixed-width table of the records; keeps the embedding, every K-th layer and the last layer."""
    layers = sorted({r["layer"] for r in records})
    if every <= 0:
        every = max(1, math.ceil(max(layers, default=0) / 15))
    last = layers[-1] if layers else 0
    keep = [r for r in records if r["layer"] % every == 0 or r["layer"] in (1, last)]
    head = f"{'stack':<8}{'layer':>6}  {'block':<11}{'var':>11}{'corr':>8}{'grad_var':>11}" \
           f"{'grad_corr':>10}{'block_var':>11}"
    lines = [head, "-" * len(head)]
    for r in keep:
        bv = "" if r["block_var"] is None else f"{r['block_var']:.4g}"
        mark = "  !" if r.get("valid") is False else ""
        lines.append(f"{r['stack'] or '-':<8}{r['layer']:>6}  {r['block']:<11}{r['var']:>11.4g}"
                     f"{fixed(r['corr']):>8}{r['grad_var']:>11.4g}{fixed(r['grad_corr']):>10}{bv:>11}{mark}")
    if any(r.get("valid") is False for r in records):
        lines.append("! = outside the validated range of a component formula (see the warnings)")
    if len(keep) < len(records):
        lines.append(f"({len(records) - len(keep)} of {len(records)} rows hidden; --every 1 shows all, "
                     "--csv/--json write all)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..theory.model import predict

    given = _explicit(args)
    config = config_from_hf_dir(args.hf, given) if args.hf else config_from_args(args)
    if args.compare_scheme and not args.plot:
        raise ValueError("--compare-scheme draws further schemes into the --plot figure; give --plot FILE.png")
    positional = {"auto": None, "on": True, "off": False}[args.positional]
    traj = predict(config, positional=positional)
    wrote_stdout = write_tables(traj, args)
    # machine-readable output on stdout: the warnings go to stderr so the JSON/CSV stays parseable
    warn_to = sys.stderr if wrote_stdout else sys.stdout
    if args.plot:
        from ..plotting import plot_trajectories

        schemes = [config.scheme] + [s for s in dict.fromkeys(args.compare_scheme) if s != config.scheme]
        trajs = [traj] + [predict(config.replace(scheme=s), positional=positional) for s in schemes[1:]]
        plot_trajectories(trajs, args.plot, [f"{s} ({config.norm}-LN), predicted" for s in schemes],
                          title=f"Predicted: {config.arch}, {config.norm}-LN, {config.n_layers} layers, "
                                f"d_model={config.d_model}, L={config.seq_len}")
    if not wrote_stdout:
        print(f"deepscalelm predict: {config.arch}, {config.norm}-LN, scheme={config.scheme}, "
              f"{config.n_layers} layers, d_model={config.d_model}, heads={config.n_heads}, "
              f"d_ff={config.ffn_dim}, L={config.seq_len}, dropout={config.dropout}")
        print(format_table(traj.to_records(), args.every))
        print("block_var: variance of the sublayer's own output F before the merge x <- lambda*x + beta*F "
              "(dslm predict --help explains every column)")
    for line in traj.validity():
        print(f"warning: {line}", file=warn_to)
    if not wrote_stdout:
        for kind in ("json", "csv", "plot"):
            if getattr(args, kind):
                print(f"wrote {getattr(args, kind)}")
        if args.hf and config.norm == "pre" and config.scheme == "dslm":
            print("(the folded checkpoint's stream is this one divided by lam^(2i-1) after layer i's attention "
                  "and by lam^(2i) after its FFN; see docs/hf.md)")
    return 0
