"""Byte-level encoding of task examples for a pretrained byte-level model (numpy only).

The pretrained models read UTF-8 bytes as ids 0..255 (plus ``<mask>`` = 256 for the MLM encoder),
so fine-tuning needs no new embeddings: three ASCII control bytes, which never occur in the task
texts, mark the structure of an input:

* ``BOS`` = 0x02 (STX) at position 0: the encoder's pooled position (the ``[CLS]`` of BERT);
* ``SEP`` = 0x1F (unit separator) between the parts (question, option, context);
* ``EOS`` = 0x03 (ETX) after the last part: the decoder's pooled position (the last real token
  of a causal model sees the whole input);
* ``PAD`` = 0x00 (NUL) after ``EOS`` up to the padded length.

Input layout: ``BOS query SEP [option SEP] context EOS PAD...`` (``BOS text EOS`` for single
sentences). The question and option come first so that only the context (passage, dialogue, story)
is cut when the input exceeds ``max_len``: the context keeps its beginning (``truncate="head"``) or
its end (``truncate="tail"``, bAbI: the facts nearest the question). If the question and option alone
exceed the budget, they are cut as well (their end is dropped) and the context is left out.
Encoders see fixed-length rows (always padded to ``max_len``) because the models take no attention
mask: a row's representation must not depend on what else is in its batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import DSLMError
from ..tasks import Example, TaskData

BOS, SEP, EOS, PAD = 0x02, 0x1F, 0x03, 0x00
MIN_LEN = 8


def _b(s: str) -> list[int]:
    return list(s.encode("utf-8"))


def encode_parts(front: Sequence[str], context: str | None, max_len: int, truncate: str = "head") -> list[int]:
    """Ids ``BOS f1 SEP f2 ... SEP context EOS`` of at most ``max_len`` bytes (no padding)."""
    if max_len < MIN_LEN:
        raise ValueError(f"max_len must be >= {MIN_LEN}, got {max_len}")
    if truncate not in ("head", "tail"):
        raise ValueError(f"truncate must be 'head' or 'tail', got {truncate!r}")
    ids = [BOS]
    for k, part in enumerate(front):
        if k:
            ids.append(SEP)
        ids += _b(part)
    budget = max_len - 1  # keep room for EOS
    if len(ids) >= budget:  # front alone too long: cut it, drop the context
        return ids[:budget] + [EOS]
    if context is not None:
        if len(ids) > 1:
            ids.append(SEP)
        room = budget - len(ids)
        c = _b(context)
        if len(c) > room:
            c = c[:room] if truncate == "head" else c[len(c) - room:]
        ids += c
    return ids[:budget] + [EOS]


def example_inputs(ex: Example, kind: str, max_len: int, truncate: str) -> list[list[int]]:
    """One id list per row the head scores: 1 for classification, one per option for multiple choice."""
    if kind == "multiple_choice":
        if not ex.options:
            raise DSLMError(f"{ex.where}: a multiple-choice example needs options")
        context = ex.text or None  # a question without a passage: BOS question SEP option EOS
        return [encode_parts([ex.query or "", opt], context, max_len, truncate) for opt in ex.options]
    if ex.query is None:
        return [encode_parts([ex.text], None, max_len, truncate)]
    return [encode_parts([ex.query], ex.text, max_len, truncate)]


def encode_split(examples: Sequence[Example], task: TaskData, max_len: int, pad_to_max: bool
                 ) -> dict[str, np.ndarray]:
    """Arrays of a split: ``ids`` int64 [N, K, Lp], ``lengths`` int64 [N, K] (real tokens incl.
    BOS/EOS), ``labels`` int64 [N]; K = 1 for classification, options per question for multiple
    choice; Lp = ``max_len`` if ``pad_to_max`` else the longest row of the split."""
    if not examples:
        raise DSLMError(f"task {task.name}: an empty split cannot be encoded")
    rows = [example_inputs(ex, task.kind, max_len, task.truncate) for ex in examples]
    k = len(rows[0])
    for ex, r in zip(examples, rows, strict=True):
        if len(r) != k:
            raise DSLMError(f"{ex.where}: {len(r)} options, other examples of this split have {k}")
    width = max_len if pad_to_max else max(len(x) for r in rows for x in r)
    ids = np.full((len(rows), k, width), PAD, dtype=np.int64)
    lengths = np.zeros((len(rows), k), dtype=np.int64)
    for i, r in enumerate(rows):
        for j, x in enumerate(r):
            ids[i, j, :len(x)] = x
            lengths[i, j] = len(x)
    labels = np.array([ex.label for ex in examples], dtype=np.int64)
    return {"ids": ids, "lengths": lengths, "labels": labels}


__all__ = ["BOS", "SEP", "EOS", "PAD", "encode_parts", "example_inputs", "encode_split"]
