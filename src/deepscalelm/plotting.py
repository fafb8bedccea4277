"""Plots of one or more trajectories against depth (matplotlib, Agg backend, PNG files)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from .records import Trajectory

PANELS = (("var", "forward variance of the stream"), ("corr", "token-to-token correlation"),
          ("grad_var", "gradient variance of the stream"))


def layer_positions(keys: Sequence[tuple[str, int, str]]) -> tuple[list[float], list[tuple[float, str]]]:
    """x position in layers of each (stack, layer, block) key, and (x, stack) where each later stack starts.

    Layer l's sublayers are spread evenly over (l - 1, l] (its last one at l), the embedding sits at
    0 and a final norm at N + 0.5. A further stack (the decoder of an encoder-decoder) continues one
    layer after the end of the previous one."""
    counts: dict[tuple[str, int], int] = {}
    for stack, layer, block in keys:
        if block not in ("embedding", "final_norm"):
            counts[(stack, layer)] = counts.get((stack, layer), 0) + 1
    xs: list[float] = []
    starts: list[tuple[float, str]] = []
    offset, end, prev = 0.0, 0.0, None
    seen: dict[tuple[str, int], int] = {}
    for stack, layer, block in keys:
        if stack != prev:
            if prev is not None:
                offset = end + 1.0
                starts.append((offset, stack))
            prev = stack
        if block == "embedding":
            x = 0.0
        elif block == "final_norm":
            x = layer + 0.5
        else:
            seen[(stack, layer)] = seen.get((stack, layer), 0) + 1
            x = layer - 1 + seen[(stack, layer)] / counts[(stack, layer)]
        xs.append(offset + x)
        end = max(end, offset + x)
    return xs, starts


def broken_at_stacks(keys: Sequence[tuple[str, int, str]], xs: Sequence[float],
                     ys: Sequence[float]) -> tuple[list[float], list[float]]:
    """``xs``/``ys`` with a NaN between stacks, so that a line does not join two stacks."""
    bx: list[float] = []
    by: list[float] = []
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        if i and keys[i][0] != keys[i - 1][0]:
            bx.append(math.nan)
            by.append(math.nan)
        bx.append(x)
        by.append(y)
    return bx, by


def layer_axis_label(keys: Sequence[tuple[str, int, str]]) -> str:
    """"layer", or "layer (encoder, then decoder)" for several stacks."""
    stacks = list(dict.fromkeys(k[0] for k in keys))
    return "layer" + (" (" + ", then ".join(stacks) + ")" if len(stacks) > 1 else "")


def mark_stacks(ax, starts: Sequence[tuple[float, str]]) -> None:
    """A dotted line and the stack's name where each later stack starts."""
    for x, stack in starts:
        ax.axvline(x - 0.5, color="grey", lw=0.8, ls=":")
        ax.annotate(stack, (x, 1.0), xycoords=("data", "axes fraction"), fontsize=8, va="top")


def plot_trajectories(trajs: Sequence[Trajectory], path: str | Path, labels: Sequence[str] | None = None,
                      title: str | None = None) -> Path:
    """Draw forward variance, correlation and gradient variance against the layer; write a PNG.

    Variance panels switch to a log scale when the values span more than a factor of 20.
    Predicted trajectories are drawn dashed, measured ones solid; further trajectories of the same
    kind get their own colour and a marker every few layers, so coinciding curves stay visible.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(labels) if labels is not None else [t.source for t in trajs]
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 3.8))
    markers = (None, "o", "s", "^", "D", "v")
    for ax, (field, desc) in zip(axes, PANELS, strict=True):
        lo, hi = float("inf"), 0.0
        for i, (traj, label) in enumerate(zip(trajs, labels, strict=True)):
            keys = [r.key for r in traj]
            xs, starts = layer_positions(keys)
            ys = [float(v) for v in traj.column(field)]
            style = "--" if traj.source == "predicted" else "-"
            marker = markers[i % len(markers)]
            extra = {"marker": marker, "ms": 3.5, "markevery": max(1, len(xs) // 15)} if marker else {}
            ax.plot(*broken_at_stacks(keys, xs, ys), style, label=label, lw=1.4, color=f"C{i}", **extra)
            pos = [y for y in ys if y > 0]
            if pos:
                lo, hi = min(lo, min(pos)), max(hi, max(pos))
        if field != "corr" and hi > 20 * lo:
            ax.set_yscale("log")
        ax.set_title(desc, fontsize=10)
        ax.set_xlabel(layer_axis_label([r.key for r in trajs[0]]) if trajs else "layer")
        ax.grid(alpha=0.3)
        if trajs:
            mark_stacks(ax, layer_positions([r.key for r in trajs[0]])[1])
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Write a matplotlib figure to ``path`` through a temporary sibling and a rename (no partial
    PNG is ever left), then close it. The format follows the suffix (PNG when there is none)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fmt = path.suffix[1:].lower() or "png"
    supported = fig.canvas.get_supported_filetypes()
    if fmt not in supported:
        plt.close(fig)
        raise ValueError(f"cannot write a {fmt!r} image to {path}: use one of the suffixes "
                         f"{', '.join('.' + k for k in sorted(supported))}")
    try:
        fig.savefig(tmp, dpi=dpi, format=fmt)
    finally:
        plt.close(fig)
    tmp.replace(path)
    return path
