"""Fashion-MNIST (and MNIST) in the IDX format, gzip-compressed or not, read with numpy.

IDX: a big-endian header (magic 2051 for images with count, rows, cols; 2049 for labels with
count) followed by uint8 data. Train files are ``train-images-idx3-ubyte[.gz]`` /
``train-labels-idx1-ubyte[.gz]``, test files ``t10k-...``. The test set serves as validation set.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from ..errors import DSLMError

#: mean and standard deviation of Fashion-MNIST training pixels scaled to [0, 1]
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530


def _open(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError) as exc:
        raise DSLMError(f"cannot read IDX file {path}: {exc}") from None


def read_idx(path: Path, expect_magic: int) -> np.ndarray:
    """Array stored in an IDX file; checks the magic number and the payload size."""
    raw = _open(path)
    if len(raw) < 8:
        raise DSLMError(f"IDX file {path} is truncated")
    magic = struct.unpack(">I", raw[:4])[0]
    if magic != expect_magic:
        raise DSLMError(f"{path} is not an IDX {'image' if expect_magic == 2051 else 'label'} file "
                        f"(magic {magic}, expected {expect_magic})")
    ndim = magic & 0xFF
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    offset = 4 + 4 * ndim
    n = int(np.prod(dims))
    if len(raw) - offset != n:
        raise DSLMError(f"IDX file {path} is truncated or has trailing bytes ({len(raw) - offset} "
                        f"payload bytes, header says {n})")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def _find(directory: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    raise DSLMError(f"{directory} has no {stem}[.gz]: pass the Fashion-MNIST directory with --data")


def load_fashion_mnist(directory: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train": (images[N,28,28] uint8, labels[N] uint8), "val": (test images, test labels)}."""
    d = Path(directory).expanduser()
    if not d.is_dir():
        raise DSLMError(f"image data directory {d} does not exist (give the Fashion-MNIST directory)")
    out = {}
    for split, prefix in (("train", "train"), ("val", "t10k")):
        x = read_idx(_find(d, f"{prefix}-images-idx3-ubyte"), 2051)
        y = read_idx(_find(d, f"{prefix}-labels-idx1-ubyte"), 2049)
        if len(x) != len(y):
            raise DSLMError(f"{d}: {prefix} has {len(x)} images but {len(y)} labels")
        out[split] = (x, y)
    return out


__all__ = ["read_idx", "load_fashion_mnist", "FASHION_MNIST_MEAN", "FASHION_MNIST_STD"]
