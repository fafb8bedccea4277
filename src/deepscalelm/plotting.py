"""Plots of one or more trajectories against depth (matplotlib, Agg backend, PNG files)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .records import Trajectory

PANELS = (("var", "forward variance of the stream"), ("corr", "token-to-token correlation"),
          ("grad_var", "gradient variance of the stream"))


def _depth_axis(traj: Trajectory) -> list[float]:
    """x position of each record: sublayer count from the input (embedding = 0)."""
    return [float(i) for i in range(len(traj))]


def plot_trajectories(trajs: Sequence[Trajectory], path: str | Path, labels: Sequence[str] | None = None,
                      title: str | None = None) -> Path:
    """Draw forward variance, correlation and gradient variance against depth; write a PNG.

    Variance panels switch to a log scale when the values span more than a factor of 20.
    Predicted trajectories are drawn dashed, measured ones solid.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(labels) if labels is not None else [t.source for t in trajs]
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 3.8))
    for ax, (field, desc) in zip(axes, PANELS):
        lo, hi = float("inf"), 0.0
        for traj, label in zip(trajs, labels):
            ys = [float(v) for v in traj.column(field)]
            style = "--" if traj.source == "predicted" else "-"
            ax.plot(_depth_axis(traj), ys, style, label=label, lw=1.4)
            pos = [y for y in ys if y > 0]
            if pos:
                lo, hi = min(lo, min(pos)), max(hi, max(pos))
        if field != "corr" and hi > 20 * lo:
            ax.set_yscale("log")
        ax.set_title(desc, fontsize=10)
        ax.set_xlabel("sublayer (0 = embedding)")
        ax.grid(alpha=0.3)
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
