"""Tokenizers: byte-level (default), word-level (Penn Treebank style), BPE (Hugging Face `tokenizers`)
and any existing Hugging Face ``tokenizer.json`` (GPT-2, Llama, ...) used as it is.

Every tokenizer maps UTF-8 bytes to integer ids in ``[0, vocab_size)`` and appends the special
tokens an objective needs (``<mask>`` for masked LM, ``<pad>``/``<eos>``/sentinels for span
corruption) after its base vocabulary. A tokenizer is saved with the run as ``tokenizer.json``
(plain JSON, no pickle) and restored with `load_tokenizer`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DSLMError

TOKENIZERS = ("byte", "word", "bpe")


class Tokenizer:
    """Base class: a base vocabulary of `base_size` ids followed by named special tokens."""

    kind = "base"

    def __init__(self, specials: Sequence[str] = ()) -> None:
        if len(set(specials)) != len(specials):
            raise ValueError(f"duplicate special tokens in {list(specials)}")
        self.specials: list[str] = list(specials)

    # -- to implement ------------------------------------------------------------------------
    @property
    def base_size(self) -> int:
        raise NotImplementedError

    def encode_bytes(self, data: bytes) -> np.ndarray:
        """Ids (int64 array) of a chunk of UTF-8 bytes."""
        raise NotImplementedError

    def _decode_base(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def _state(self) -> dict[str, Any]:
        return {}

    # -- shared ----------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.base_size + len(self.specials)

    def special_id(self, name: str) -> int:
        """Id of a special token such as ``"<mask>"``."""
        try:
            return self.base_size + self.specials.index(name)
        except ValueError:
            raise DSLMError(f"tokenizer has no special token {name!r} (it has {self.specials})") from None

    def with_specials(self, names: Iterable[str]) -> Tokenizer:
        """Add special tokens (in order) that are not there yet; returns self."""
        for n in names:
            if n not in self.specials:
                self.specials.append(n)
        return self

    def encode(self, text: str) -> list[int]:
        return self.encode_bytes(text.encode("utf-8")).tolist()

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; special tokens are written as their names."""
        out: list[str] = []
        run: list[int] = []
        for i in ids:
            i = int(i)
            if i >= self.base_size:
                if run:
                    out.append(self._decode_base(run))
                    run = []
                out.append(self.specials[i - self.base_size] if i < self.vocab_size else "<?>")
            else:
                run.append(i)
        if run:
            out.append(self._decode_base(run))
        return "".join(out)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "specials": list(self.specials), **self._state()}

    def save(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh)


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as ids 0..255 (no training, no unknown tokens)."""

    kind = "byte"

    @property
    def base_size(self) -> int:
        return 256

    def encode_bytes(self, data: bytes) -> np.ndarray:
        return np.frombuffer(data, dtype=np.uint8).astype(np.int64)

    def _decode_base(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class WordTokenizer(Tokenizer):
    """Whitespace-separated words; every line ends with ``<eos>``; unseen words map to ``<unk>``.

    The vocabulary is the training split's words ordered by count (descending), then alphabetically,
    with ``<unk>`` and ``<eos>`` always present. For the Penn Treebank this reproduces the standard
    10,000-word vocabulary.
    """

    kind = "word"

    def __init__(self, words: Sequence[str], specials: Sequence[str] = ()) -> None:
        super().__init__(specials)
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}
        for required in ("<unk>", "<eos>"):
            if required not in self.index:
                raise ValueError(f"word vocabulary lacks {required}")
        self.unk = self.index["<unk>"]
        self.eos = self.index["<eos>"]

    @classmethod
    def train(cls, chunks: Iterable[bytes], max_vocab: int | None = None) -> WordTokenizer:
        counts: Counter[str] = Counter()
        for chunk in chunks:
            for line in chunk.decode("utf-8", errors="replace").splitlines():
                counts.update(line.split())
                counts["<eos>"] += 1
        counts.setdefault("<unk>", 0)
        ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        words = [w for w, _ in ordered]
        if max_vocab is not None and len(words) > max_vocab:
            kept = words[:max_vocab]
            for req in ("<unk>", "<eos>"):
                if req not in kept:
                    kept[-1 if req == "<unk>" else -2] = req
            words = kept
        return cls(words)

    @property
    def base_size(self) -> int:
        return len(self.words)

    def encode_bytes(self, data: bytes) -> np.ndarray:
        ids: list[int] = []
        get = self.index.get
        for line in data.decode("utf-8", errors="replace").splitlines():
            ids.extend(get(w, self.unk) for w in line.split())
            ids.append(self.eos)
        return np.asarray(ids, dtype=np.int64)

    def _decode_base(self, ids: Sequence[int]) -> str:
        words = [self.words[int(i)] for i in ids]
        return " ".join("\n" if w == "<eos>" else w for w in words).replace(" \n ", "\n")

    def _state(self) -> dict[str, Any]:
        return {"words": self.words}


class BPETokenizer(Tokenizer):
    """Byte-level BPE from Hugging Face `tokenizers` (the optional extra ``bpe``)."""

    kind = "bpe"

    def __init__(self, tokenizer: Any, specials: Sequence[str] = ()) -> None:
        super().__init__(specials)
        self.tok = tokenizer

    @staticmethod
    def _lib() -> Any:
        try:
            import tokenizers  # noqa: PLC0415
        except ImportError:
            raise DSLMError("the BPE tokenizer needs the `tokenizers` package: "
                            "pip install 'deepscalelm[bpe]'") from None
        return tokenizers

    @classmethod
    def train(cls, chunks: Iterable[bytes], vocab_size: int, seed: int = 0) -> BPETokenizer:
        """Train a byte-level BPE of `vocab_size` ids on the chunks (the training split)."""
        lib = cls._lib()
        if vocab_size < 257:
            raise ValueError(f"bpe_vocab_size must be at least 257 (256 bytes + merges), got {vocab_size}")
        tok = lib.Tokenizer(lib.models.BPE())
        tok.pre_tokenizer = lib.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = lib.decoders.ByteLevel()
        trainer = lib.trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                          initial_alphabet=lib.pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator((c.decode("utf-8", errors="replace") for c in chunks), trainer=trainer)
        return cls(tok)

    @property
    def base_size(self) -> int:
        return int(self.tok.get_vocab_size())

    def encode_bytes(self, data: bytes) -> np.ndarray:
        text = data.decode("utf-8", errors="replace")
        # encode line by line in batches: the Rust side parallelises and memory stays bounded
        lines = text.splitlines(keepends=True)
        encs = self.tok.encode_batch(lines, add_special_tokens=False) if lines else []
        ids = [i for e in encs for i in e.ids]
        return np.asarray(ids, dtype=np.int64)

    def _decode_base(self, ids: Sequence[int]) -> str:
        return self.tok.decode([int(i) for i in ids])

    def _state(self) -> dict[str, Any]:
        return {"model": self.tok.to_str()}


class HFTokenizer(BPETokenizer):
    """An existing Hugging Face ``tokenizer.json`` (GPT-2 byte-level BPE, Llama-style BPE with byte
    fallback, ...), used unchanged: no training, its own vocabulary and added tokens.

    Text is encoded chunk by chunk without the tokenizer's post-processing (no BOS/EOS per chunk), so
    the token stream is what the tokenizer gives for the whole text up to chunk boundaries.
    """

    kind = "hf"

    @classmethod
    def from_file(cls, path: str | Path) -> HFTokenizer:
        """Read a ``tokenizer.json``; `DSLMError` when it is missing or not a tokenizers file."""
        lib = cls._lib()
        p = Path(path).expanduser()
        if not p.is_file():
            raise DSLMError(f"tokenizer file {p} does not exist (give --tokenizer byte|word|bpe or a tokenizer.json)")
        try:
            tok = lib.Tokenizer.from_file(str(p))
        except Exception as exc:  # tokenizers raises a bare Exception for unparsable files
            raise DSLMError(f"{p} is not a Hugging Face tokenizer.json ({exc})") from None
        return cls(tok)

    def encode_bytes(self, data: bytes) -> np.ndarray:
        text = data.decode("utf-8", errors="replace")
        ids = self.tok.encode(text, add_special_tokens=False).ids if text else []
        return np.asarray(ids, dtype=np.int64)


def build_tokenizer(kind: str, train_chunks: Iterable[bytes] | None = None, *,
                    bpe_vocab_size: int = 1024, word_max_vocab: int | None = None) -> Tokenizer:
    """A fresh tokenizer of `kind`; word and BPE tokenizers are trained on `train_chunks`.

    A `kind` ending in ``.json`` is the path of a Hugging Face ``tokenizer.json`` (see `HFTokenizer`).
    """
    if kind == "byte":
        return ByteTokenizer()
    if kind.endswith(".json"):
        return HFTokenizer.from_file(kind)
    if kind not in TOKENIZERS:
        raise ValueError(f"tokenizer must be one of {TOKENIZERS} or a tokenizer.json path, got {kind!r}")
    if train_chunks is None:
        raise ValueError(f"the {kind} tokenizer must be trained: pass the training split")
    if kind == "word":
        return WordTokenizer.train(train_chunks, word_max_vocab)
    return BPETokenizer.train(train_chunks, bpe_vocab_size)


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    kind = d.get("type")
    specials = d.get("specials", [])
    if kind == "byte":
        return ByteTokenizer(specials)
    if kind == "word":
        return WordTokenizer(d["words"], specials)
    if kind in ("bpe", "hf"):
        lib = BPETokenizer._lib()
        return (BPETokenizer if kind == "bpe" else HFTokenizer)(lib.Tokenizer.from_str(d["model"]), specials)
    raise DSLMError(f"unknown tokenizer type {kind!r} in tokenizer file")


def load_tokenizer(path: str) -> Tokenizer:
    """Read a tokenizer saved by `Tokenizer.save`."""
    try:
        with open(path, encoding="utf-8") as fh:
            d = json.load(fh)
        return tokenizer_from_dict(d)
    except FileNotFoundError:
        raise DSLMError(f"tokenizer file {path} is missing") from None
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise DSLMError(f"tokenizer file {path} is corrupt ({exc})") from None


__all__ = ["Tokenizer", "ByteTokenizer", "WordTokenizer", "BPETokenizer", "HFTokenizer", "build_tokenizer",
           "load_tokenizer", "tokenizer_from_dict", "TOKENIZERS"]
