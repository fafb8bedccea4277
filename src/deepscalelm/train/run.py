"""Run directories: prepare data and configs once, reopen them for training, resuming, sampling, eval.

A run directory holds ``run.json`` (both configs, as finally used), ``tokenizer.json``,
``data/`` (memmapped token streams of the splits and ``meta.json``), ``metrics.jsonl``,
``checkpoints/`` and ``summary.json``. A new run is prepared in a hidden staging directory next to
the target and renamed into place only when complete, so bad input leaves nothing behind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ModelConfig
from ..data.images import FASHION_MNIST_MEAN, FASHION_MNIST_STD, load_fashion_mnist
from ..data.objectives import (DEFAULT_OBJECTIVE, CausalLM, ImageClassification, MaskedLM, SpanCorruption,
                               special_tokens)
from ..data.stream import TokenStream, encode_split, open_stream, unigram_repeat_prob
from ..data.text import BUILTIN, load_corpus, read_split_text
from ..data.tokenizer import Tokenizer, build_tokenizer, load_tokenizer
from ..errors import DSLMError
from .checkpoint import write_json_atomic
from .config import TrainConfig

RUN_FILE = "run.json"
logger = logging.getLogger(__name__)


def objective_of(model: ModelConfig, train: TrainConfig) -> str:
    obj = DEFAULT_OBJECTIVE[model.arch] if train.objective == "auto" else train.objective
    want = DEFAULT_OBJECTIVE[model.arch]
    if obj != want:
        raise ValueError(f"objective {obj!r} does not fit arch {model.arch!r} (use {want!r})")
    return obj


@dataclass
class RunData:
    """Everything a process needs to train or evaluate a run."""

    model_config: ModelConfig
    train_config: TrainConfig
    objective: str
    tokenizer: Tokenizer | None
    train: Any  # an objective from deepscalelm.data.objectives
    val: Any
    val_tokens_per_byte: float | None


def check_out_dir(out: Path, resume: bool) -> None:
    """Refuse to start a new run in a directory that holds something (another run or other files)."""
    if resume:
        if not (out / RUN_FILE).is_file():
            raise DSLMError(f"--resume: {out} holds no run ({RUN_FILE} missing)")
        return
    if out.exists():
        if not out.is_dir():
            raise DSLMError(f"output path {out} exists and is not a directory")
        if (out / RUN_FILE).exists():
            raise DSLMError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
        if any(out.iterdir()):
            raise DSLMError(f"output directory {out} is not empty: choose another --out")


#: the sample prompt on the built-in corpus (a speaker's name, as its lines begin)
BUILTIN_PROMPT = "ROMEO:"
#: longest prompt taken from the start of the user's own training text, in characters
PROMPT_CHARS = 20


def default_sample_prompt(data: str | None, text: str) -> str:
    """The sample prompt of a run whose ``sample_prompt`` is None: `BUILTIN_PROMPT` on the built-in
    corpus (``data`` None or its name), else the start of the first non-empty line of ``text`` (the
    training text): at most `PROMPT_CHARS` characters, cut after the last space when longer, so a
    word tokenizer sees whole words. "" when the text has no non-blank line."""
    if data is None or data == BUILTIN:
        return BUILTIN_PROMPT
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if len(line) <= PROMPT_CHARS:
        return line
    cut = line[:PROMPT_CHARS]
    return cut[:cut.rfind(" ")] if " " in cut.strip() else cut


def prepare_run(out: Path, model: ModelConfig, train: TrainConfig, log: Any = None) -> None:
    """Create a new run directory: tokenizer, memmapped data, final configs (atomically).

    Messages go to `log` (default: this module's logger at INFO level).
    """
    log = log or logger.info
    check_out_dir(out, resume=False)
    objective = objective_of(model, train)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.staging-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        if objective == "image":
            if train.data is None:
                raise DSLMError("the vit objective needs --data DIR with Fashion-MNIST IDX files")
            sets = load_fashion_mnist(train.data)
            _, h, w = sets["train"][0].shape
            if (h, w) != (model.image_size, model.image_size) or model.channels != 1:
                raise DSLMError(f"images are {h}x{w} grayscale but the model expects "
                                f"{model.image_size}x{model.image_size}x{model.channels}")
            n_cls = int(sets["train"][1].max()) + 1
            if n_cls > model.n_classes:
                raise DSLMError(f"data has {n_cls} classes, model.n_classes is {model.n_classes}")
        else:
            corpus = load_corpus(train.data, train.val_fraction)
            log(f"data: {corpus.describe()}")
            if train.sample_prompt is None:
                text = read_split_text(corpus.splits["train"], limit=1 << 14)
                train = train.replace(sample_prompt=default_sample_prompt(train.data, text))
            tok = build_tokenizer(train.tokenizer, corpus.splits["train"].chunks(align_lines=True),
                                  bpe_vocab_size=train.bpe_vocab_size)
            tok.with_specials(special_tokens(objective))
            if tok.vocab_size != model.vocab_size:
                log(f"vocab_size: {model.vocab_size} -> {tok.vocab_size} (from the {tok.kind} tokenizer)")
                model = model.replace(vocab_size=tok.vocab_size)
            tok.save(str(stage / "tokenizer.json"))
            (stage / "data").mkdir()
            meta: dict[str, Any] = {"corpus": corpus.name, "splits": {}}
            for name, split in corpus.splits.items():
                meta["splits"][name] = encode_split(tok, split, stage / "data" / f"{name}.bin")
            write_json_atomic(stage / "data" / "meta.json", meta)
            for name in ("train", "val"):
                n = meta["splits"][name]["n_tokens"]
                extra = 1 if objective == "causal" else 0
                if n < model.seq_len + extra:
                    raise DSLMError(f"the {name} split has {n:,} tokens, fewer than seq_len + {extra} = "
                                    f"{model.seq_len + extra}: use a smaller --seq-len or more data")
            if model.same_token_prob is None:
                p = unigram_repeat_prob(open_stream(stage / "data", "train"), tok.vocab_size)
                model = model.replace(same_token_prob=round(p, 6))
                log(f"same_token_prob = {p:.4f} (sum of squared unigram frequencies of the training split)")
        write_json_atomic(stage / RUN_FILE, {"model": model.to_dict(), "train": train.to_dict(),
                                             "objective": objective, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
        if out.exists():  # an empty directory passed check_out_dir
            out.rmdir()
        os.rename(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def read_run(out: Path) -> dict[str, Any]:
    try:
        with open(out / RUN_FILE, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise DSLMError(f"{out} holds no run ({RUN_FILE} missing)") from None
    except json.JSONDecodeError as exc:
        raise DSLMError(f"{out / RUN_FILE} is corrupt ({exc})") from None


def open_run(out: Path, train_override: TrainConfig | None = None) -> RunData:
    """Reopen a prepared run (configs from run.json, or `train_override` for resumable changes)."""
    info = read_run(out)
    model = ModelConfig.from_dict(info["model"])
    train = train_override or TrainConfig.from_dict(info["train"])
    return open_data(out, model, train, info["objective"])


def open_data(out: Path, model: ModelConfig, train: TrainConfig, objective: str) -> RunData:
    if objective == "image":
        data_dir = train.data
        if data_dir is None:
            raise DSLMError("the vit objective needs --data DIR with Fashion-MNIST IDX files")
        sets = load_fashion_mnist(data_dir)
        mk = lambda s: ImageClassification(*sets[s], seed=train.seed, mean=FASHION_MNIST_MEAN,  # noqa: E731
                                           std=FASHION_MNIST_STD)
        return RunData(model, train, objective, None, mk("train"), mk("val"), None)
    tok = load_tokenizer(str(out / "tokenizer.json"))
    if tok.vocab_size != model.vocab_size:
        raise DSLMError(f"{out}: tokenizer has {tok.vocab_size} ids but the model config says "
                        f"vocab_size={model.vocab_size}")
    streams = {s: open_stream(out / "data", s) for s in ("train", "val")}
    objs = {s: make_objective(objective, streams[s], model, train, tok, s) for s in streams}
    return RunData(model, train, objective, tok, objs["train"], objs["val"], streams["val"].tokens_per_byte)


def make_objective(objective: str, stream: TokenStream, model: ModelConfig, train: TrainConfig,
                   tok: Tokenizer, split: str) -> Any:
    args = (stream, model.seq_len, model.vocab_size, train.seed, split)
    if objective == "causal":
        return CausalLM(*args)
    if objective == "mlm":
        return MaskedLM(*args, mask_id=tok.special_id("<mask>"), n_regular=tok.base_size, mask_prob=train.mask_prob)
    if objective == "span":
        from ..data.objectives import N_SENTINELS

        return SpanCorruption(*args, pad_id=tok.special_id("<pad>"), eos_id=tok.special_id("<eos>"),
                              sentinel_ids=[tok.special_id(f"<extra_{i}>") for i in range(N_SENTINELS)],
                              density=train.span_density, mean_span=train.span_mean_len)
    raise ValueError(f"objective {objective!r} has no token stream")


__all__ = ["RunData", "prepare_run", "open_run", "open_data", "read_run", "check_out_dir", "objective_of",
           "RUN_FILE"]
