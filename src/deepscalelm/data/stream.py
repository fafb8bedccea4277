"""Token streams on disk as numpy memmaps, so corpora larger than RAM can be trained on.

A split is encoded once, chunk by chunk, into ``<run>/data/<split>.bin`` (raw little-endian
integers of the smallest unsigned type that holds the vocabulary) and described in
``<run>/data/meta.json``. Files are written to a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DSLMError
from .text import Split
from .tokenizer import Tokenizer


def dtype_for(vocab_size: int) -> np.dtype:
    """Smallest unsigned integer dtype holding ids in [0, vocab_size)."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dt).max + 1:
            return np.dtype(dt).newbyteorder("<")
    raise ValueError(f"vocab_size {vocab_size} is too large")


@dataclass
class TokenStream:
    """A read-only memmap of token ids plus the number of text bytes they encode."""

    tokens: np.ndarray
    n_bytes: int

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def tokens_per_byte(self) -> float:
        return len(self) / max(1, self.n_bytes)


def encode_split(tokenizer: Tokenizer, split: Split, path: Path) -> dict[str, Any]:
    """Encode `split` into the binary file `path` (atomically); return its meta entry."""
    dt = dtype_for(tokenizer.vocab_size)
    tmp = path.with_name(path.name + ".tmp")
    n_tokens = 0
    align = tokenizer.kind != "byte"
    try:
        with open(tmp, "wb") as fh:
            for chunk in split.chunks(align_lines=align):
                ids = tokenizer.encode_bytes(chunk)
                fh.write(ids.astype(dt, copy=False).tobytes())
                n_tokens += int(ids.shape[0])
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {"file": path.name, "n_tokens": n_tokens, "n_bytes": split.n_bytes, "dtype": dt.str}


def open_stream(data_dir: Path, split: str) -> TokenStream:
    """Open the memmap of `split` described in ``data_dir/meta.json``."""
    meta = read_meta(data_dir)
    if split not in meta["splits"]:
        raise DSLMError(f"split {split!r} not in {data_dir} (have {sorted(meta['splits'])})")
    entry = meta["splits"][split]
    path = data_dir / entry["file"]
    dt = np.dtype(entry["dtype"])
    n = int(entry["n_tokens"])
    if not path.exists() or path.stat().st_size != n * dt.itemsize:
        raise DSLMError(f"token file {path} is missing or truncated (expected {n * dt.itemsize} bytes); "
                        "delete the run directory and start again")
    tokens = np.memmap(path, dtype=dt, mode="r", shape=(n,)) if n else np.zeros(0, dt)
    return TokenStream(tokens, int(entry["n_bytes"]))


def read_meta(data_dir: Path) -> dict[str, Any]:
    try:
        with open(data_dir / "meta.json", encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise DSLMError(f"{data_dir}/meta.json is missing: not a prepared data directory") from None
    except json.JSONDecodeError as exc:
        raise DSLMError(f"{data_dir}/meta.json is corrupt ({exc})") from None


def unigram_repeat_prob(stream: TokenStream, vocab_size: int, chunk: int = 1 << 22) -> float:
    """sum_i p_i^2 of the unigram distribution: P(two random positions hold the same token).

    This is the data statistic `ModelConfig.same_token_prob` that the DSLM scheme uses for the
    token correlation at the embedding output.
    """
    counts = np.zeros(vocab_size, dtype=np.int64)
    toks = stream.tokens
    for i in range(0, len(stream), chunk):
        counts += np.bincount(np.asarray(toks[i:i + chunk], dtype=np.int64), minlength=vocab_size)
    total = counts.sum()
    if total == 0:
        raise DSLMError("cannot compute token statistics of an empty split")
    p = counts / total
    return float(np.sum(p * p))


__all__ = ["TokenStream", "encode_split", "open_stream", "read_meta", "dtype_for", "unigram_repeat_prob"]
