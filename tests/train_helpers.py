"""Shared set-up for the training tests: a small text file and a tiny training configuration."""

from __future__ import annotations

from pathlib import Path

from deepscalelm.train.config import TrainConfig


def small_text(tmp_path: Path, n: int = 30_000) -> str:
    """The first ``n`` bytes of the built-in corpus written to a text file; returns its path."""
    from deepscalelm.data.text import builtin_source

    with builtin_source().open() as fh:
        data = fh.read(n)
    f = tmp_path / "corpus.txt"
    f.write_bytes(data)
    return str(f)


def tiny_train_config(tmp_path: Path, **kw) -> TrainConfig:
    """A 6-step run on `small_text` with evaluation and checkpoints every 3 steps (overridable)."""
    base = dict(data=small_text(tmp_path), batch_size=4, max_steps=6, warmup_steps=2, eval_interval=3,
                eval_batches=2, ckpt_interval=3, sample_tokens=8, log_interval=1, seed=7, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def tiny_fashion_mnist(tmp_path: Path, n_train: int = 32, n_test: int = 16) -> str:
    """A directory of random 28x28 Fashion-MNIST-format IDX files (10 classes); returns its path."""
    import gzip
    import struct

    import numpy as np

    rng = np.random.default_rng(0)
    d = tmp_path / "fmnist"
    d.mkdir(exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        for kind, arr, magic in (("images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), 2051),
                                 ("labels-idx1-ubyte", rng.integers(0, 10, (n,)), 2049)):
            a = arr.astype(np.uint8)
            raw = struct.pack(">I", magic) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()
            with gzip.open(d / f"{prefix}-{kind}.gz", "wb") as fh:
                fh.write(raw)
    return str(d)
