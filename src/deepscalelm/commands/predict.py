"""``dslm predict``: the per-layer moment trajectory of a model, from the closed-form theory."""

from __future__ import annotations

import argparse
import sys

from ._config_args import add_config_arguments, config_from_args
from ._output import write_tables

COLUMNS = ("stack", "layer", "block", "var", "corr", "grad_var", "grad_corr", "block_var")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict per-layer forward/backward moments (no torch)",
                       description="Closed-form moments of the residual stream after every sublayer: "
                                   "forward variance and token correlation, gradient variance and "
                                   "correlation (unit-variance gradient seeded at the output).")
    p.add_argument("--json", metavar="FILE", help="write the trajectory as JSON ('-' for stdout)")
    p.add_argument("--csv", metavar="FILE", help="write the trajectory as CSV ('-' for stdout)")
    p.add_argument("--plot", metavar="FILE.png", help="draw variance, correlation and gradient "
                                                      "variance against depth")
    p.add_argument("--positional", choices=("auto", "on", "off"), default="auto",
                   help="causal stacks: position-resolved backward pass (on), pooled (off), or "
                        "position-resolved when cheap (auto, default)")
    p.add_argument("--every", type=int, default=0, metavar="K",
                   help="table: show every K-th layer only (default: about 30 rows)")
    add_config_arguments(p)
    p.set_defaults(func=run)


def format_table(records: list[dict], every: int = 0) -> str:
    """Fixed-width table of the records; keeps the embedding, every K-th layer and the last layer."""
    layers = sorted({r["layer"] for r in records})
    if every <= 0:
        every = max(1, len(layers) // 15)
    last = layers[-1] if layers else 0
    keep = [r for r in records if r["layer"] % every == 0 or r["layer"] in (1, last)]
    head = f"{'stack':<8}{'layer':>6}  {'block':<11}{'var':>11}{'corr':>8}{'grad_var':>11}" \
           f"{'grad_corr':>10}{'block_var':>11}"
    lines = [head, "-" * len(head)]
    for r in keep:
        bv = "" if r["block_var"] is None else f"{r['block_var']:.4g}"
        mark = "  !" if r.get("valid") is False else ""
        lines.append(f"{r['stack'] or '-':<8}{r['layer']:>6}  {r['block']:<11}{r['var']:>11.4g}"
                     f"{r['corr']:>8.3f}{r['grad_var']:>11.4g}{r['grad_corr']:>10.3f}{bv:>11}{mark}")
    if any(r.get("valid") is False for r in records):
        lines.append("! = outside the validated range of a component formula (see the warnings)")
    if len(keep) < len(records):
        lines.append(f"({len(records) - len(keep)} of {len(records)} rows hidden; --every 1 shows all, "
                     "--csv/--json write all)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..theory.model import predict

    config = config_from_args(args)
    traj = predict(config, positional={"auto": None, "on": True, "off": False}[args.positional])
    wrote_stdout = write_tables(traj, args)
    # machine-readable output on stdout: the warnings go to stderr so the JSON/CSV stays parseable
    warn_to = sys.stderr if wrote_stdout else sys.stdout
    if args.plot:
        from ..plotting import plot_trajectories

        plot_trajectories([traj], args.plot, [f"{config.scheme} ({config.norm}-LN), predicted"],
                          title=f"{config.arch}, {config.n_layers} layers, d={config.d_model}")
    if not wrote_stdout:
        print(f"deepscalelm predict: {config.arch}, {config.norm}-LN, scheme={config.scheme}, "
              f"{config.n_layers} layers, d_model={config.d_model}, heads={config.n_heads}, "
              f"d_ff={config.ffn_dim}, L={config.seq_len}, dropout={config.dropout}")
        print(format_table(traj.to_records(), args.every))
    for line in traj.validity():
        print(f"warning: {line}", file=warn_to)
    if not wrote_stdout:
        for kind in ("json", "csv", "plot"):
            if getattr(args, kind):
                print(f"wrote {getattr(args, kind)}")
    return 0
