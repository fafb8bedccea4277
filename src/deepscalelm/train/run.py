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
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ModelConfig
from ..data.images import FASHION_MNIST_MEAN, FASHION_MNIST_STD, load_fashion_mnist
from ..data.objectives import DEFAULT_OBJECTIVE, CausalLM, ImageClassification, MaskedLM, SpanCorruption, special_tokens
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


def _probe_writable(directory: Path, what: str) -> None:
    """Raise DSLMError unless a file can be created in `directory` (tried, so it holds for root and
    read-only file systems alike)."""
    import tempfile

    try:
        fd, name = tempfile.mkstemp(prefix=".write-test-", dir=directory)
    except OSError as exc:
        raise DSLMError(f"{what} {directory} is not writable ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(name)


def _existing_ancestor(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_out_dir(out: Path, resume: bool) -> None:
    """Refuse to start a new run in a directory that holds something (another run or other files),
    and check up front that the run directory (and, on resume, ``checkpoints/``) can be written."""
    if resume:
        if not (out / RUN_FILE).is_file():
            raise DSLMError(f"--resume: {out} holds no run ({RUN_FILE} missing)")
        _probe_writable(out, "run directory")
        if (out / "checkpoints").is_dir():
            _probe_writable(out / "checkpoints", "checkpoint directory")
        return
    if out.exists():
        if not out.is_dir():
            raise DSLMError(f"output path {out} exists and is not a directory")
        if (out / RUN_FILE).exists():
            raise DSLMError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
        if any(out.iterdir()):
            raise DSLMError(f"output directory {out} is not empty: choose another --out")
        _probe_writable(out, "output directory")
    base = _existing_ancestor(out.parent)
    if not base.is_dir():
        raise DSLMError(f"cannot create {out}: {base} is not a directory")
    _probe_writable(base, "parent directory")


_STAGING = re.compile(r"^\..+\.staging-(\d+)$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def remove_orphaned_staging(parent: Path) -> list[Path]:
    """Delete ``.<run>.staging-<pid>/`` folders in `parent` whose process no longer exists (left by a
    preparation that was killed); returns what was removed. Assumes `parent` is not shared with
    preparations running on another machine."""
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    for p in parent.iterdir():
        m = _STAGING.match(p.name)
        if m and p.is_dir() and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


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
    for orphan in remove_orphaned_staging(out.parent):
        log(f"removed {orphan} (left by a killed run preparation)")
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
    """``run.json`` of a run: an object with ``model`` and ``train`` objects and an ``objective``."""
    path = out / RUN_FILE
    try:
        with open(path, encoding="utf-8") as fh:
            info = json.load(fh)
    except FileNotFoundError:
        raise DSLMError(f"{out} holds no run ({RUN_FILE} missing)") from None
    except IsADirectoryError:
        raise DSLMError(f"{path} is a directory, not a file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DSLMError(f"{path} is corrupt ({exc})") from None
    if not isinstance(info, dict):
        raise DSLMError(f"{path} must hold a JSON object, got {type(info).__name__}")
    for key in ("model", "train"):
        if not isinstance(info.get(key), dict):
            raise DSLMError(f"{path}: {key!r} must be an object of {'Model' if key == 'model' else 'Train'}Config "
                            f"fields, got {info.get(key)!r}"[:300])
    if not isinstance(info.get("objective"), str):
        raise DSLMError(f"{path}: 'objective' must be a string, got {info.get('objective')!r}")
    return info


def run_configs(out: Path, info: dict[str, Any] | None = None) -> tuple[ModelConfig, TrainConfig]:
    """(ModelConfig, TrainConfig) stored in ``run.json``; bad fields raise DSLMError naming the file."""
    info = info or read_run(out)
    try:
        return ModelConfig.from_dict(info["model"]), TrainConfig.from_dict(info["train"])
    except (TypeError, ValueError) as exc:
        raise DSLMError(f"{out / RUN_FILE}: {exc}") from None


def open_run(out: Path, train_override: TrainConfig | None = None) -> RunData:
    """Reopen a prepared run (configs from run.json, or `train_override` for resumable changes)."""
    info = read_run(out)
    model, stored = run_configs(out, info)
    return open_data(out, model, train_override or stored, info["objective"])


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


__all__ = ["RunData", "prepare_run", "open_run", "open_data", "read_run", "run_configs", "check_out_dir",
           "objective_of", "remove_orphaned_staging", "RUN_FILE"]
