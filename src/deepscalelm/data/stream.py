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


def _split_entry(data_dir: Path, split: str, entry: Any) -> tuple[Path, np.dtype, int, int]:
    """(token file, dtype, n_tokens, n_bytes) of a meta.json split entry, validated.

    meta.json is not trusted: the dtype must be an integer type (a memmap of Python objects would
    read raw bytes as pointers), and the file must be a plain name inside `data_dir`.
    """
    where = f"{data_dir / 'meta.json'}: split {split!r}"
    if not isinstance(entry, dict):
        raise DSLMError(f"{where} must be an object, got {type(entry).__name__}")
    name = entry.get("file")
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise DSLMError(f"{where}: 'file' must be a file name inside {data_dir}, got {name!r}")
    path = data_dir / name
    if not path.resolve().is_relative_to(data_dir.resolve()):  # a symbolic link pointing outside
        raise DSLMError(f"{where}: token file {path} leads outside {data_dir}")
    try:
        dt = np.dtype(entry.get("dtype"))
    except (TypeError, ValueError):
        raise DSLMError(f"{where}: 'dtype' {entry.get('dtype')!r} is not a numpy dtype") from None
    if dt.kind not in "ui" or dt.itemsize > 8:
        raise DSLMError(f"{where}: 'dtype' must be an integer type such as '<u2', got {entry.get('dtype')!r}")
    counts = []
    for key in ("n_tokens", "n_bytes"):
        v = entry.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise DSLMError(f"{where}: {key!r} must be an integer >= 0, got {v!r}")
        counts.append(v)
    return path, dt, counts[0], counts[1]


def open_stream(data_dir: Path, split: str) -> TokenStream:
    """Open the memmap of `split` described in ``data_dir/meta.json`` (entries validated)."""
    meta = read_meta(data_dir)
    if split not in meta["splits"]:
        raise DSLMError(f"split {split!r} not in {data_dir} (have {sorted(meta['splits'])})")
    path, dt, n, n_bytes = _split_entry(data_dir, split, meta["splits"][split])
    if not path.is_file() or path.stat().st_size != n * dt.itemsize:
        raise DSLMError(f"token file {path} is missing or truncated (expected {n * dt.itemsize} bytes); "
                        "delete the run directory and start again")
    tokens = np.memmap(path, dtype=dt, mode="r", shape=(n,)) if n else np.zeros(0, dt)
    return TokenStream(tokens, n_bytes)


def read_meta(data_dir: Path) -> dict[str, Any]:
    """``data_dir/meta.json``: an object with a ``splits`` object (entries checked by `open_stream`)."""
    try:
        with open(data_dir / "meta.json", encoding="utf-8") as fh:
            meta = json.load(fh)
    except FileNotFoundError:
        raise DSLMError(f"{data_dir}/meta.json is missing: not a prepared data directory") from None
    except IsADirectoryError:
        raise DSLMError(f"{data_dir}/meta.json is a directory, not a file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DSLMError(f"{data_dir}/meta.json is corrupt ({exc})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("splits"), dict):
        raise DSLMError(f"{data_dir}/meta.json must be an object with a 'splits' object")
    return meta


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
