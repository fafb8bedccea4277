"""Training objectives as deterministic batch makers.

The global batch of optimizer step ``s`` is a pure function of ``(seed, s)``: its random numbers come
from ``numpy.random.default_rng([seed, salt, s])``. Resuming therefore needs only the step number
(no iterator state), and any split of the global batch over gradient-accumulation micro-batches and
data-parallel ranks sees exactly the rows a single process would.

Batches are dicts of numpy arrays whose first axis is the sequence/image index:

* ``causal`` (decoder): ``ids``, ``labels`` [B, L] (labels are the ids shifted by one).
* ``mlm`` (encoder): ``ids`` [B, L] with BERT masking (of the selected ``mask_prob`` positions,
  80 % ``<mask>``, 10 % a random token, 10 % unchanged), ``labels`` = original id at selected
  positions, -100 elsewhere.
* ``span`` (encoder-decoder, T5-style span corruption): ``src`` [B, L] with each noise span replaced
  by one sentinel, ``tgt_in``/``labels`` [B, T] (sentinel + span tokens ..., then ``<eos>``;
  ``tgt_in`` starts with ``<pad>`` as the start token; padded labels are -100).
* ``image`` (ViT): ``images`` [B, C, H, W] float32 (standardised), ``labels`` [B].
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from ..errors import DSLMError
from .stream import TokenStream

IGNORE = -100
OBJECTIVES = ("causal", "mlm", "span", "image")
#: objective used for each ModelConfig.arch when TrainConfig.objective is "auto"
DEFAULT_OBJECTIVE = {"decoder": "causal", "encoder": "mlm", "encoder-decoder": "span", "vit": "image"}
N_SENTINELS = 32


def special_tokens(objective: str) -> list[str]:
    """Special tokens an objective adds to the tokenizer's vocabulary."""
    if objective == "mlm":
        return ["<mask>"]
    if objective == "span":
        return ["<pad>", "<eos>"] + [f"<extra_{i}>" for i in range(N_SENTINELS)]
    return []


def _rng(seed: int, salt: int, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, salt, step])


class TokenObjective:
    """Sequences of `seq_len` tokens cut at random offsets of a token stream."""

    name = "causal"
    extra = 1  # tokens read beyond seq_len per row

    def __init__(self, stream: TokenStream, seq_len: int, vocab_size: int, seed: int, split: str) -> None:
        need = seq_len + self.extra
        if len(stream) < need:
            raise DSLMError(f"the {split} split has {len(stream):,} tokens, fewer than seq_len + {self.extra} = "
                            f"{need}: use a shorter --seq-len or more data")
        self.stream, self.seq_len, self.vocab_size, self.seed = stream, seq_len, vocab_size, seed

    def _windows(self, starts: np.ndarray) -> np.ndarray:
        n = self.seq_len + self.extra
        toks = self.stream.tokens
        return np.stack([np.asarray(toks[s:s + n], dtype=np.int64) for s in starts])

    def _make(self, windows: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {"ids": windows[:, :-1], "labels": windows[:, 1:]}

    def batch(self, step: int, batch_size: int) -> dict[str, np.ndarray]:
        """The global batch of optimizer step `step` (rows are independent random windows)."""
        rng = _rng(self.seed, 1, step)
        starts = rng.integers(0, len(self.stream) - (self.seq_len + self.extra) + 1, size=batch_size)
        return self._make(self._windows(starts), rng)

    def eval_batches(self, batch_size: int, max_batches: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Non-overlapping windows covering the split in order (evenly spaced subset if capped)."""
        n_win = (len(self.stream) - self.extra) // self.seq_len
        starts = np.arange(n_win, dtype=np.int64) * self.seq_len
        if max_batches is not None and n_win > max_batches * batch_size:
            pick = np.linspace(0, n_win - 1, max_batches * batch_size).round().astype(np.int64)
            starts = starts[pick]
        rng = _rng(self.seed, 2, 0)  # fixed masking for mlm/span evaluation
        for i in range(0, len(starts), batch_size):
            yield self._make(self._windows(starts[i:i + batch_size]), rng)


class CausalLM(TokenObjective):
    name = "causal"
    extra = 1


class MaskedLM(TokenObjective):
    name = "mlm"
    extra = 0

    def __init__(self, stream: TokenStream, seq_len: int, vocab_size: int, seed: int, split: str, *,
                 mask_id: int, n_regular: int, mask_prob: float = 0.15) -> None:
        super().__init__(stream, seq_len, vocab_size, seed, split)
        if not 0.0 < mask_prob < 1.0:
            raise ValueError(f"mask_prob must be in (0, 1), got {mask_prob}")
        self.mask_id, self.n_regular, self.mask_prob = mask_id, n_regular, mask_prob

    def _make(self, windows: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        ids = windows.copy()
        sel = rng.random(ids.shape) < self.mask_prob
        # at least one prediction per row so no row has an empty loss
        empty = ~sel.any(axis=1)
        if empty.any():
            sel[np.nonzero(empty)[0], rng.integers(0, ids.shape[1], size=int(empty.sum()))] = True
        labels = np.where(sel, windows, IGNORE)
        u = rng.random(ids.shape)
        ids[sel & (u < 0.8)] = self.mask_id
        rand = sel & (u >= 0.8) & (u < 0.9)
        ids[rand] = rng.integers(0, self.n_regular, size=int(rand.sum()))
        return {"ids": ids, "labels": labels}


def random_spans(length: int, density: float, mean_span: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean noise mask of `length` with round(length*density) noise tokens in alternating spans.

    The noise tokens are split into ``n = round(n_noise / mean_span)`` spans of random positive
    lengths, and the rest into n gaps, interleaved gap-span-gap-span..., starting with a gap.
    """
    n_noise = min(max(1, round(length * density)), length - 1)
    n_spans = max(1, min(round(n_noise / mean_span), n_noise, length - n_noise))

    def parts(total: int, k: int) -> np.ndarray:
        cuts = np.sort(rng.choice(np.arange(1, total), size=k - 1, replace=False)) if k > 1 else np.array([], int)
        return np.diff(np.concatenate([[0], cuts, [total]]))

    noise_len, gap_len = parts(n_noise, n_spans), parts(length - n_noise, n_spans)
    mask = np.zeros(length, dtype=bool)
    pos = 0
    for g, s in zip(gap_len, noise_len, strict=True):
        pos += g
        mask[pos:pos + s] = True
        pos += s
    return mask


class SpanCorruption(TokenObjective):
    name = "span"
    extra = 0

    def __init__(self, stream: TokenStream, seq_len: int, vocab_size: int, seed: int, split: str, *,
                 pad_id: int, eos_id: int, sentinel_ids: list[int], density: float = 0.15,
                 mean_span: float = 3.0) -> None:
        super().__init__(stream, seq_len, vocab_size, seed, split)
        if not 0.0 < density < 1.0:
            raise ValueError(f"span_density must be in (0, 1), got {density}")
        if mean_span < 1:
            raise ValueError(f"span_mean_len must be >= 1, got {mean_span}")
        self.pad_id, self.eos_id, self.sentinels = pad_id, eos_id, sentinel_ids
        self.density, self.mean_span = density, mean_span
        n_noise = min(max(1, round(seq_len * density)), seq_len - 1)
        n_spans = max(1, min(round(n_noise / mean_span), n_noise, seq_len - n_noise))
        if n_spans > len(sentinel_ids):
            raise DSLMError(f"span corruption of seq_len {seq_len} needs {n_spans} sentinels, "
                            f"only {len(sentinel_ids)} exist: lower seq_len or span_density")
        #: fixed target length: every span's sentinel + noise tokens + <eos>
        self.tgt_len = n_noise + n_spans + 1

    def _make(self, windows: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        B, L = windows.shape
        src = np.full((B, L), self.pad_id, dtype=np.int64)
        tgt = np.full((B, self.tgt_len), IGNORE, dtype=np.int64)
        for b in range(B):
            mask = random_spans(L, self.density, self.mean_span, rng)
            s_out: list[int] = []
            t_out: list[int] = []
            k = -1
            for i in range(L):
                if mask[i]:
                    if i == 0 or not mask[i - 1]:
                        k += 1
                        s_out.append(self.sentinels[k])
                        t_out.append(self.sentinels[k])
                    t_out.append(int(windows[b, i]))
                else:
                    s_out.append(int(windows[b, i]))
            t_out.append(self.eos_id)
            src[b, :len(s_out)] = s_out
            tgt[b, :len(t_out)] = t_out
        tgt_in = np.full_like(tgt, self.pad_id)
        tgt_in[:, 1:] = np.where(tgt[:, :-1] == IGNORE, self.pad_id, tgt[:, :-1])
        return {"src": src, "tgt_in": tgt_in, "labels": tgt}


class ImageClassification:
    """Random image batches from uint8 arrays [N, H, W] (or [N, C, H, W]) with integer labels."""

    name = "image"

    def __init__(self, images: np.ndarray, labels: np.ndarray, seed: int, mean: float, std: float) -> None:
        if images.ndim == 3:
            images = images[:, None]
        if len(images) == 0 or len(images) != len(labels):
            raise DSLMError(f"image set has {len(images)} images and {len(labels)} labels")
        self.images, self.labels, self.seed, self.mean, self.std = images, labels, seed, mean, std

    def _make(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        x = (self.images[idx].astype(np.float32) / 255.0 - self.mean) / self.std
        return {"images": x, "labels": self.labels[idx].astype(np.int64)}

    def batch(self, step: int, batch_size: int) -> dict[str, np.ndarray]:
        return self._make(_rng(self.seed, 1, step).integers(0, len(self.images), size=batch_size))

    def eval_batches(self, batch_size: int, max_batches: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        n = len(self.images) if max_batches is None else min(len(self.images), max_batches * batch_size)
        for i in range(0, n, batch_size):
            yield self._make(np.arange(i, min(n, i + batch_size)))


def rows(batch: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    """Rows [start, stop) of every array of a batch."""
    return {k: v[start:stop] for k, v in batch.items()}


def bits_per_byte(loss_nats: float, tokens_per_byte: float) -> float:
    """Bits per text byte from a mean per-token loss in nats."""
    return loss_nats * tokens_per_byte / math.log(2)


__all__ = ["OBJECTIVES", "DEFAULT_OBJECTIVE", "IGNORE", "special_tokens", "CausalLM", "MaskedLM",
           "SpanCorruption", "ImageClassification", "random_spans", "rows", "bits_per_byte"]
