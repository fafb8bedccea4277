"""Image corruptions and robustness evaluation of image classifiers (numpy + scipy.ndimage).

Corruptions act on grayscale images with pixel values in [0, 1], shape [N, H, W], and return float32
arrays of the same shape clipped to [0, 1]. Each has five severities (1 = mild ... 5 = strong):

* ``gaussian_noise``: additive N(0, sigma^2) per pixel, sigma = 0.04, 0.08, 0.12, 0.18, 0.26;
* ``blur``: Gaussian blur (``scipy.ndimage.gaussian_filter``), sigma = 0.4, 0.7, 1.0, 1.4, 2.0 pixels;
* ``contrast``: ``(x - mean(x)) * c + mean(x)`` per image, c = 0.6, 0.45, 0.3, 0.2, 0.1;
* ``rotation``: rotation about the centre by +-angle (sign drawn per image), angle = 8, 15, 22, 30,
  40 degrees, bilinear, zero fill (``scipy.ndimage.rotate``, ``reshape=False``).

Random corruptions draw from ``numpy.random.default_rng([seed, corruption index, severity])``, so
they are reproducible and independent of evaluation order. ``relative robustness`` = mean accuracy
over all corruptions and severities / clean accuracy.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

SEVERITIES = {
    "gaussian_noise": (0.04, 0.08, 0.12, 0.18, 0.26),
    "blur": (0.4, 0.7, 1.0, 1.4, 2.0),
    "contrast": (0.6, 0.45, 0.3, 0.2, 0.1),
    "rotation": (8.0, 15.0, 22.0, 30.0, 40.0),
}
CORRUPTIONS = tuple(SEVERITIES)


def _check(images: np.ndarray) -> np.ndarray:
    x = np.asarray(images)
    if x.ndim != 3:
        raise ValueError(f"images must have shape [N, H, W], got {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"images must be floats in [0, 1] (divide uint8 pixels by 255), got dtype {x.dtype}")
    if x.size and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
        raise ValueError(f"pixel values must lie in [0, 1], got [{float(x.min())}, {float(x.max())}]")
    return x.astype(np.float32, copy=False)


def corrupt(images: np.ndarray, corruption: str, severity: int, seed: int = 0) -> np.ndarray:
    """``images`` [N, H, W] in [0, 1] under `corruption` at `severity` (1..5); a new float32 array."""
    if corruption not in SEVERITIES:
        raise ValueError(f"unknown corruption {corruption!r}; choose from {CORRUPTIONS}")
    if isinstance(severity, bool) or not isinstance(severity, int) or not 1 <= severity <= 5:
        raise ValueError(f"severity must be an integer in [1, 5], got {severity!r}")
    x = _check(images)
    p = SEVERITIES[corruption][severity - 1]
    rng = np.random.default_rng([seed, CORRUPTIONS.index(corruption), severity])
    if corruption == "gaussian_noise":
        y = x + rng.normal(0.0, p, size=x.shape).astype(np.float32)
    elif corruption == "blur":
        y = ndimage.gaussian_filter(x, sigma=(0, p, p), mode="constant")
    elif corruption == "contrast":
        m = x.mean(axis=(1, 2), keepdims=True)
        y = (x - m) * p + m
    else:
        signs = rng.choice([-1.0, 1.0], size=len(x))
        y = np.stack([ndimage.rotate(img, s * p, reshape=False, order=1, mode="constant", cval=0.0)
                      for img, s in zip(x, signs, strict=True)]) if len(x) else x.copy()
    return np.clip(y, 0.0, 1.0).astype(np.float32)


def robustness(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, labels: np.ndarray,
               severities: tuple[int, ...] = (1, 2, 3, 4, 5), corruptions: tuple[str, ...] = CORRUPTIONS,
               seed: int = 0) -> dict:
    """Clean and corrupted accuracy of a classifier.

    `predict` maps images [N, H, W] in [0, 1] to predicted labels [N] (it does its own
    normalisation). Returns ``clean``, ``per[corruption][str(severity)]``, ``per_corruption`` (mean
    over severities), ``mean_corruption_acc`` (over all corruptions × severities) and
    ``relative_robustness`` = mean_corruption_acc / clean.
    """
    x = _check(images)
    y = np.asarray(labels)
    if y.shape != (len(x),):
        raise ValueError(f"labels must have shape [{len(x)}], got {y.shape}")
    if len(x) == 0:
        raise ValueError("no images to evaluate")

    def acc(imgs: np.ndarray) -> float:
        return float((np.asarray(predict(imgs)) == y).mean())

    clean = acc(x)
    per = {c: {str(s): acc(corrupt(x, c, s, seed)) for s in severities} for c in corruptions}
    per_c = {c: float(np.mean(list(v.values()))) for c, v in per.items()}
    mca = float(np.mean([a for v in per.values() for a in v.values()]))
    return {"clean": clean, "per": per, "per_corruption": per_c, "mean_corruption_acc": mca,
            "relative_robustness": mca / clean if clean > 0 else float("nan"), "n": len(x),
            "severities": list(severities), "seed": seed}


__all__ = ["corrupt", "robustness", "CORRUPTIONS", "SEVERITIES"]
