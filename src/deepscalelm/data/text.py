"""Text corpora: the built-in Tiny Shakespeare, a user's text file, or a directory of text files.

A corpus is read as raw bytes in chunks (it never has to fit in memory) and checked on the way:
a missing path, an empty corpus or a file that is not UTF-8 text raises `DSLMError` naming the file.

Splits: a directory holding ``*train*``, ``*valid*``/``*val*`` (and optionally ``*test*``) files is
used with those splits as given (e.g. the Penn Treebank ``ptb.{train,valid,test}.txt``); any other
corpus is split by bytes, the first ``1 - val_fraction`` for training and the rest for validation
(the char-rnn / nanoGPT convention for Tiny Shakespeare).
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import BinaryIO, cast

from ..errors import DSLMError

#: name used for the corpus that ships inside the package
BUILTIN = "tinyshakespeare"
_BUILTIN_FILE = "tinyshakespeare.txt.gz"
#: bytes read per chunk when streaming a corpus
CHUNK_BYTES = 1 << 20
#: bytes inspected for NUL characters to tell binary files from text
_SNIFF_BYTES = 8192


def builtin_bytes() -> bytes:
    """The whole built-in corpus (Tiny Shakespeare, 1,115,394 bytes), decompressed."""
    with gzip.open(resources.files("deepscalelm.data").joinpath(_BUILTIN_FILE).open("rb")) as fh:
        return fh.read()


@dataclass(frozen=True)
class TextSource:
    """One text file (possibly the gzip-compressed built-in corpus) and its size in bytes."""

    path: str  # file path, or "builtin:tinyshakespeare"
    n_bytes: int

    def open(self) -> BinaryIO:
        """Open for binary reading (decompressing the built-in corpus)."""
        if self.path == f"builtin:{BUILTIN}":
            raw = resources.files("deepscalelm.data").joinpath(_BUILTIN_FILE).open("rb")
            return cast(BinaryIO, gzip.open(raw))  # a GzipFile reads bytes like a binary file
        return open(self.path, "rb")


@dataclass
class Split:
    """A byte range [start, stop) over the concatenation of `sources`."""

    sources: list[TextSource]
    start: int = 0
    stop: int | None = None

    @property
    def n_bytes(self) -> int:
        total = sum(s.n_bytes for s in self.sources)
        return (total if self.stop is None else self.stop) - self.start

    def chunks(self, *, align_lines: bool = False) -> Iterator[bytes]:
        """Yield the bytes of the split in chunks of about `CHUNK_BYTES`.

        With ``align_lines`` every chunk except the last ends with a newline, so word-level and BPE
        tokenizers never see a word cut in two.
        """
        pending = b""
        for chunk in _iter_range(self.sources, self.start, self.stop):
            if not align_lines:
                yield chunk
                continue
            pending += chunk
            cut = pending.rfind(b"\n")
            if cut >= 0:
                yield pending[:cut + 1]
                pending = pending[cut + 1:]
        if pending:
            yield pending


@dataclass
class Corpus:
    """Named splits of a text corpus plus a short description for logs."""

    name: str
    splits: dict[str, Split] = field(default_factory=dict)

    def describe(self) -> str:
        parts = ", ".join(f"{k} {v.n_bytes:,} B" for k, v in self.splits.items())
        return f"{self.name} ({parts})"


def _iter_range(sources: list[TextSource], start: int, stop: int | None) -> Iterator[bytes]:
    """Bytes [start, stop) of the concatenated sources, in chunks."""
    offset = 0
    for src in sources:
        lo, hi = offset, offset + src.n_bytes
        offset = hi
        if hi <= start or (stop is not None and lo >= stop):
            continue
        skip = max(0, start - lo)
        want = (hi if stop is None else min(hi, stop)) - lo - skip
        with src.open() as fh:
            _skip(fh, skip)
            while want > 0:
                chunk = fh.read(min(CHUNK_BYTES, want))
                if not chunk:
                    raise DSLMError(f"{src.path}: file shrank while reading (expected {src.n_bytes} bytes)")
                want -= len(chunk)
                yield chunk


def _skip(fh: BinaryIO, n: int) -> None:
    while n > 0:
        got = fh.read(min(CHUNK_BYTES, n))
        if not got:
            return
        n -= len(got)


def check_text_file(path: Path) -> int:
    """Check that `path` is a non-empty UTF-8 text file; return its size in bytes.

    The whole file is decoded incrementally (so a binary file is caught wherever its first
    non-text byte is) but never held in memory.
    """
    if not path.exists():
        raise DSLMError(f"data file {path} does not exist")
    if not path.is_file():
        raise DSLMError(f"data path {path} is not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise DSLMError(f"data file {path} is empty")
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(CHUNK_BYTES)
            if not chunk:
                break
            if offset < _SNIFF_BYTES and b"\x00" in chunk[:_SNIFF_BYTES - offset]:
                raise DSLMError(f"data file {path} looks binary (it contains NUL bytes); pass a UTF-8 text file")
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                raise DSLMError(f"data file {path} is not UTF-8 text (invalid byte at offset "
                                f"{offset + exc.start}); pass a UTF-8 text file") from None
            offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise DSLMError(f"data file {path} is not UTF-8 text (it ends inside a character)") from None
    return size


def builtin_source() -> TextSource:
    """The Tiny Shakespeare corpus shipped with the package (1,115,394 bytes of ASCII)."""
    with TextSource(f"builtin:{BUILTIN}", 0).open() as fh:
        n = 0
        while True:
            chunk = fh.read(CHUNK_BYTES)
            if not chunk:
                break
            n += len(chunk)
    return TextSource(f"builtin:{BUILTIN}", n)


def _named_split_files(files: list[Path]) -> dict[str, Path] | None:
    """Map split name -> file when the names mark train/valid(/test) splits, else None."""
    found: dict[str, Path] = {}
    for f in files:
        stem = f.name.lower()
        for split, keys in (("train", ("train",)), ("val", ("valid", "val", "dev")), ("test", ("test",))):
            if any(k in stem.replace("-", ".").replace("_", ".").split(".") for k in keys):
                if split in found:
                    return None  # ambiguous: two files claim the same split
                found[split] = f
    if "train" in found and "val" in found:
        return found
    return None


def load_corpus(data: str | None, val_fraction: float = 0.1) -> Corpus:
    """Resolve ``--data`` into a `Corpus` with at least ``train`` and ``val`` splits.

    `data` is None for the built-in Tiny Shakespeare, a text file, or a directory (all regular,
    non-hidden files below it, sorted by path, concatenated; or the named train/valid/test files).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if data is None or data == BUILTIN:
        sources = [builtin_source()]
        name = BUILTIN
    else:
        path = Path(data).expanduser()
        if not path.exists():
            raise DSLMError(f"data path {path} does not exist")
        if path.is_dir():
            files = sorted(p for p in path.rglob("*")
                           if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not files:
                raise DSLMError(f"data directory {path} holds no files")
            named = _named_split_files(files)
            if named is not None:
                splits = {k: Split([TextSource(str(f), check_text_file(f))]) for k, f in named.items()}
                return Corpus(str(path), splits)
            sources = [TextSource(str(f), check_text_file(f)) for f in files]
        else:
            sources = [TextSource(str(path), check_text_file(path))]
        name = str(path)
    total = sum(s.n_bytes for s in sources)
    if total == 0:
        raise DSLMError(f"corpus {name} is empty")
    cut = int(total * (1.0 - val_fraction))
    if cut <= 0 or cut >= total:
        raise DSLMError(f"corpus {name} ({total} bytes) is too small to split {1 - val_fraction:.0%}/"
                        f"{val_fraction:.0%} into train and validation")
    return Corpus(name, {"train": Split(sources, 0, cut), "val": Split(sources, cut, None)})


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK_BYTES), b""):
            h.update(chunk)
    return h.hexdigest()


def read_split_text(split: Split, limit: int | None = None) -> str:
    """Decode (up to `limit` bytes of) a split as text; for tokenizer training and prompts."""
    buf = io.BytesIO()
    for chunk in split.chunks(align_lines=True):
        buf.write(chunk)
        if limit is not None and buf.tell() >= limit:
            break
    raw = buf.getvalue()
    return raw[:limit].decode("utf-8", errors="ignore") if limit is not None else raw.decode("utf-8", errors="replace")


__all__ = ["TextSource", "Split", "Corpus", "load_corpus", "check_text_file", "builtin_source",
           "sha256_of", "read_split_text", "BUILTIN"]
