"""Corpora, tokenizers, memmapped token streams and objectives (deepscalelm.data)."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from deepscalelm.data.images import read_idx
from deepscalelm.data.objectives import IGNORE, CausalLM, MaskedLM, SpanCorruption, random_spans
from deepscalelm.data.stream import encode_split, open_stream
from deepscalelm.data.text import Split, TextSource, builtin_source, load_corpus
from deepscalelm.data.tokenizer import ByteTokenizer, WordTokenizer, build_tokenizer, load_tokenizer
from deepscalelm.errors import DSLMError

PTB = Path("/work/shared/data/ptb")


def test_builtin_corpus_is_tiny_shakespeare_split_90_10():
    src = builtin_source()
    assert src.n_bytes == 1_115_394
    c = load_corpus(None)
    assert c.splits["train"].n_bytes == int(1_115_394 * 0.9)
    assert c.splits["train"].n_bytes + c.splits["val"].n_bytes == 1_115_394
    first = next(c.splits["train"].chunks())
    assert first.startswith(b"First Citizen:")


def test_split_chunks_cover_range_exactly(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("hello\nworld\n")
    b.write_text("third line\n")
    srcs = [TextSource(str(a), a.stat().st_size), TextSource(str(b), b.stat().st_size)]
    whole = a.read_bytes() + b.read_bytes()
    for lo, hi in [(0, None), (3, 15), (12, None), (0, 5)]:
        got = b"".join(Split(srcs, lo, hi).chunks())
        assert got == whole[lo:hi]


@pytest.mark.parametrize("content,msg", [(None, "does not exist"), (b"", "is empty"),
                                         (b"abc\x00\x01def", "looks binary"), (b"abc\xff\xfe", "not UTF-8")])
def test_bad_data_files_raise_clear_errors(tmp_path, content, msg):
    f = tmp_path / "data.txt"
    if content is not None:
        f.write_bytes(content)
    with pytest.raises(DSLMError, match=msg):
        load_corpus(str(f))


def test_directory_concatenates_sorted_files_and_detects_named_splits(tmp_path):
    (tmp_path / "b.txt").write_text("bbbb\n" * 10)
    (tmp_path / "a.txt").write_text("aaaa\n" * 10)
    c = load_corpus(str(tmp_path), 0.5)
    assert b"".join(c.splits["train"].chunks()) == b"aaaa\n" * 10
    named = tmp_path / "named"
    named.mkdir()
    for n in ("x.train.txt", "x.valid.txt", "x.test.txt"):
        (named / n).write_text(f"{n}\n")
    c = load_corpus(str(named))
    assert set(c.splits) == {"train", "val", "test"}
    assert b"".join(c.splits["val"].chunks()) == b"x.valid.txt\n"


def test_byte_and_word_tokenizers_round_trip(tmp_path):
    bt = ByteTokenizer().with_specials(["<mask>"])
    assert bt.vocab_size == 257 and bt.special_id("<mask>") == 256
    assert bt.decode(bt.encode("héllo")) == "héllo"
    wt = WordTokenizer.train([b"the cat sat\nthe dog\n"])
    ids = wt.encode("the cat\nbird\n")
    assert ids[-1] == wt.eos and wt.unk in ids
    wt.save(str(tmp_path / "t.json"))
    assert load_tokenizer(str(tmp_path / "t.json")).words == wt.words


def test_bpe_tokenizer_trains_saves_and_reloads(tmp_path):
    pytest.importorskip("tokenizers")
    text = ("to be or not to be that is the question\n" * 50).encode()
    tok = build_tokenizer("bpe", [text], bpe_vocab_size=300)
    assert 256 < tok.vocab_size <= 300
    ids = tok.encode("to be or not")
    assert tok.decode(ids) == "to be or not"
    tok.save(str(tmp_path / "bpe.json"))
    again = load_tokenizer(str(tmp_path / "bpe.json"))
    assert again.encode("to be or not") == ids


@pytest.mark.skipif(not PTB.is_dir(), reason="Penn Treebank not available")
def test_ptb_word_vocabulary_is_the_standard_10k():
    c = load_corpus(str(PTB))
    tok = build_tokenizer("word", c.splits["train"].chunks(align_lines=True))
    assert tok.vocab_size == 10_000


def test_memmap_stream_matches_direct_encoding(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("abcdefghij" * 100)
    split = Split([TextSource(str(f), f.stat().st_size)])
    tok = ByteTokenizer()
    entry = encode_split(tok, split, tmp_path / "train.bin")
    (tmp_path / "meta.json").write_text(json.dumps({"splits": {"train": entry}}))
    s = open_stream(tmp_path, "train")
    assert isinstance(s.tokens, np.memmap) and s.tokens.dtype == np.uint8
    assert bytes(np.asarray(s.tokens)) == f.read_bytes()
    (tmp_path / "train.bin").write_bytes(b"abc")  # truncated
    with pytest.raises(DSLMError, match="truncated"):
        open_stream(tmp_path, "train")


def _stream(n=500, seed=0):
    from deepscalelm.data.stream import TokenStream

    return TokenStream(np.random.default_rng(seed).integers(0, 50, n).astype(np.uint8), n)


def test_causal_batches_are_shifted_and_a_function_of_step():
    obj = CausalLM(_stream(), 16, 256, seed=3, split="train")
    b1, b2 = obj.batch(5, 4), obj.batch(5, 4)
    assert np.array_equal(b1["ids"], b2["ids"])
    assert not np.array_equal(obj.batch(6, 4)["ids"], b1["ids"])
    assert np.array_equal(b1["ids"][:, 1:], b1["labels"][:, :-1])
    with pytest.raises(DSLMError, match="fewer than seq_len"):
        CausalLM(_stream(10), 16, 256, seed=0, split="val")


def test_mlm_masks_only_selected_positions():
    obj = MaskedLM(_stream(2000), 64, 257, seed=0, split="train", mask_id=256, n_regular=256, mask_prob=0.15)
    b = obj.batch(1, 16)
    sel = b["labels"] != IGNORE
    assert 0.08 < sel.mean() < 0.25
    assert (b["ids"][sel] == 256).mean() > 0.6
    assert np.all(b["ids"][~sel] < 50)


def test_span_corruption_reconstructs_the_original():
    rng = np.random.default_rng(0)
    m = random_spans(64, 0.15, 3.0, rng)
    assert m.sum() == round(64 * 0.15)
    sentinels = list(range(100, 132))
    obj = SpanCorruption(_stream(2000), 64, 300, seed=1, split="train", pad_id=98, eos_id=99,
                         sentinel_ids=sentinels)
    b = obj.batch(2, 4)
    for r in range(4):
        src, tgt = b["src"][r].tolist(), [t for t in b["labels"][r].tolist() if t != IGNORE]
        assert tgt[-1] == 99
        spans, cur = {}, None
        for t in tgt[:-1]:
            if t in sentinels:
                cur = t
                spans[cur] = []
            else:
                spans[cur].append(t)
        rebuilt = []
        for t in src:
            if t == 98:
                break
            rebuilt.extend(spans[t] if t in sentinels else [t])
        start = obj.batch(2, 4)["src"][r]
        assert len(rebuilt) == 64 and np.array_equal(start, b["src"][r])
        assert b["tgt_in"][r][0] == 98 and b["tgt_in"][r][1] == tgt[0]


def _idx(path: Path, arr: np.ndarray, magic: int, truncate: int = 0) -> None:
    raw = struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    with gzip.open(path, "wb") as fh:
        fh.write(raw[:len(raw) - truncate])


def test_idx_reader_and_truncation(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 255, (5, 28, 28)).astype(np.uint8)
    _idx(tmp_path / "i.gz", imgs, 2051)
    assert np.array_equal(read_idx(tmp_path / "i.gz", 2051), imgs)
    with pytest.raises(DSLMError, match="not an IDX label"):
        read_idx(tmp_path / "i.gz", 2049)
    _idx(tmp_path / "t.gz", imgs, 2051, truncate=10)
    with pytest.raises(DSLMError, match="truncated"):
        read_idx(tmp_path / "t.gz", 2051)
