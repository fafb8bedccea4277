"""Readers for the downstream tasks: SST-2, BoolQ, DREAM and bAbI (torch-free).

Every reader returns plain `Example` records and raises `DSLMError` naming the file and the line
(1-based) of the first malformed record, so a broken data file is found at once. `load_task` assembles
a `TaskData` (train / dev / test splits, the head it needs, a note on how the splits were made).
The user's own classification, text-pair and multiple-choice files are read by `load_files`
(`deepscalelm.tasks.files`).

Task formats (where to fetch each: `deepscalelm.datasets` and docs/data.md):

* ``sst2``: ``stsa.binary.{train,dev,test}``, one ``<label> <sentence>`` per line, label 0/1.
* ``boolq``: ``dev.jsonl`` only (the official train split is not available): one JSON object per
  line with ``question``, ``passage``, ``answer`` (JSON bool). `load_task` splits its lines with a
  fixed seed into train / dev / test (`BOOLQ_SPLIT`); these numbers do not compare with published
  BoolQ dev scores.
* ``dream``: ``{train,dev,test}.json``, a JSON array of ``[turns, questions, id]``; each question
  ``{"question", "choice": [3 strings], "answer": <one of the choices>}``: multiple choice.
* ``babi-qaN`` (N = 1..20): ``en/qaN_*_{train,test}.txt``; numbered statement lines, question lines
  ``ID question<TAB>answer<TAB>supporting ids``; a line numbered 1 starts a new story. Posed as
  classification over the answers seen in the training file; 10 % of the training questions
  (seeded) form the dev split.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..datasets import dataset_dir
from ..errors import DSLMError

KINDS = ("classification", "multiple_choice")
#: (train, dev, test) sizes of the seeded split of BoolQ's dev.jsonl (3,270 lines in all)
BOOLQ_SPLIT = (2270, 500, 500)
#: seed of every data split made here (BoolQ, bAbI dev) — fixed so that results are comparable
SPLIT_SEED = 0
TASKS = ("sst2", "boolq", "dream") + tuple(f"babi-qa{i}" for i in range(1, 21))


@dataclass(frozen=True)
class Example:
    """One labelled example.

    * ``text``: the single input (SST-2) or the context (BoolQ passage, DREAM dialogue, bAbI story).
    * ``query``: the question (None for single-sentence tasks).
    * ``options``: the answer options of a multiple-choice question (None for classification).
    * ``label``: class index, or index of the correct option.
    * ``where``: ``file:line`` of the record, for error messages.
    """

    text: str
    label: int
    query: str | None = None
    options: tuple[str, ...] | None = None
    where: str = ""


@dataclass
class TaskData:
    """A task: its splits and the head it needs.

    ``kind`` is ``classification`` (``n_labels`` classes, ``label_names[i]`` for class i) or
    ``multiple_choice`` (``n_labels`` options per question). ``truncate`` says which end of a long
    context is kept (``head``: the beginning, ``tail``: the end).
    """

    name: str
    kind: str
    n_labels: int
    splits: dict[str, list[Example]]
    label_names: list[str] = field(default_factory=list)
    truncate: str = "head"
    note: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"task kind must be one of {KINDS}, got {self.kind!r}")
        for split, exs in self.splits.items():
            check_labels(exs, self.n_labels, self.kind, f"{self.name}/{split}")

    def subset(self, sizes: dict[str, int | None], seed: int = SPLIT_SEED) -> TaskData:
        """A copy with each split cut to at most ``sizes[split]`` examples (a seeded random subset;
        None keeps the whole split)."""
        out = {}
        for split, exs in self.splits.items():
            n = sizes.get(split)
            if n is not None and n < 1:
                raise ValueError(f"subset size of {split} must be >= 1, got {n}")
            if n is None or n >= len(exs):
                out[split] = list(exs)
            else:
                idx = sorted(random.Random(f"{seed}-{self.name}-{split}").sample(range(len(exs)), n))
                out[split] = [exs[i] for i in idx]
        return TaskData(self.name, self.kind, self.n_labels, out, list(self.label_names), self.truncate,
                        self.note + (f"; subsets {sizes}" if any(v is not None for v in sizes.values()) else ""))


def check_labels(examples: Sequence[Example], n_labels: int, kind: str, what: str) -> None:
    """Raise DSLMError if a label lies outside ``[0, n_labels)`` or a multiple-choice example has a
    different number of options than the head scores."""
    for ex in examples:
        if isinstance(ex.label, bool) or not isinstance(ex.label, int) or not 0 <= ex.label < n_labels:
            raise DSLMError(f"{ex.where or what}: label {ex.label!r} is outside the head's range "
                            f"[0, {n_labels - 1}]")
        if kind == "multiple_choice":
            if ex.options is None or len(ex.options) != n_labels:
                got = None if ex.options is None else len(ex.options)
                raise DSLMError(f"{ex.where or what}: the head scores {n_labels} options, this question has {got}")


def _check_task_file(path: Path) -> None:
    """Raise DSLMError unless `path` is an existing regular file (saying which it is not)."""
    if not path.exists():
        raise DSLMError(f"task file {path} does not exist")
    if path.is_dir():
        raise DSLMError(f"task file {path} is a directory: pass the file inside it")
    if not path.is_file():
        raise DSLMError(f"task file {path} is not a regular file")


def _lines(path: Path) -> list[str]:
    _check_task_file(path)
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DSLMError(f"{path}: not UTF-8 text ({exc})") from None


# ------------------------------------------------------------------------------------- SST-2
def read_sst2(path: str | Path) -> list[Example]:
    """``<label> <sentence>`` lines, label 0 (negative) or 1 (positive)."""
    path = Path(path)
    out = []
    for i, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        parts = line.split(" ", 1)
        if len(parts) != 2 or not parts[1].strip():
            raise DSLMError(f"{path}:{i}: expected '<label> <sentence>', got {line[:60]!r}")
        if parts[0] not in ("0", "1"):
            raise DSLMError(f"{path}:{i}: label must be 0 or 1, got {parts[0]!r}")
        out.append(Example(text=parts[1].strip(), label=int(parts[0]), where=f"{path}:{i}"))
    if not out:
        raise DSLMError(f"{path} holds no examples")
    return out


# ------------------------------------------------------------------------------------- BoolQ
def read_boolq(path: str | Path) -> list[Example]:
    """JSON lines with ``question``, ``passage`` (strings) and ``answer`` (bool): label 1 = yes."""
    path = Path(path)
    out = []
    for i, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DSLMError(f"{path}:{i}: not valid JSON ({exc.msg})") from None
        if not isinstance(rec, dict):
            raise DSLMError(f"{path}:{i}: expected a JSON object, got {type(rec).__name__}")
        for key in ("question", "passage", "answer"):
            if key not in rec:
                raise DSLMError(f"{path}:{i}: missing field {key!r}")
        if not isinstance(rec["question"], str) or not isinstance(rec["passage"], str):
            raise DSLMError(f"{path}:{i}: 'question' and 'passage' must be strings")
        if not isinstance(rec["answer"], bool):
            raise DSLMError(f"{path}:{i}: 'answer' must be true or false, got {rec['answer']!r}")
        out.append(Example(text=rec["passage"], query=rec["question"], label=int(rec["answer"]),
                           where=f"{path}:{i}"))
    if not out:
        raise DSLMError(f"{path} holds no examples")
    return out


# ------------------------------------------------------------------------------------- DREAM
def _json_array_items(path: Path) -> list[tuple[int, object]]:
    """(line number, value) of every element of a top-level JSON array."""
    _check_task_file(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DSLMError(f"{path}: not UTF-8 text ({exc})") from None
    dec = json.JSONDecoder()
    ws = re.compile(r"[ \t\n\r]*")

    def fail(pos: int, msg: str) -> DSLMError:
        return DSLMError(f"{path}:{text.count(chr(10), 0, pos) + 1}: {msg}")

    def skip_ws(pos: int) -> int:
        """Offset of the first non-whitespace character at or after `pos`."""
        m = ws.match(text, pos)  # `*` also matches the empty string, so m is never None
        return m.end() if m else pos

    pos = skip_ws(0)
    if pos >= len(text) or text[pos] != "[":
        raise fail(pos, "expected a JSON array of [turns, questions, id] items")
    pos = skip_ws(pos + 1)
    items: list[tuple[int, object]] = []
    if pos < len(text) and text[pos] == "]":
        return items
    line, counted = 1, 0  # line number of offset `counted`, advanced incrementally (linear time)
    while True:
        try:
            value, end = dec.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise fail(exc.pos, f"not valid JSON ({exc.msg})") from None
        line += text.count("\n", counted, pos)
        counted = pos
        items.append((line, value))
        pos = skip_ws(end)
        if pos < len(text) and text[pos] == ",":
            pos = skip_ws(pos + 1)
            continue
        if pos < len(text) and text[pos] == "]":
            break
        raise fail(pos, "expected ',' or ']' in the top-level array")
    return items


def read_dream(path: str | Path) -> list[Example]:
    """DREAM items ``[turns, questions, id]``; one multiple-choice example per question; the
    dialogue turns are joined with newlines. Errors give the line where the item starts."""
    path = Path(path)
    out = []
    for line, item in _json_array_items(path):
        where = f"{path}:{line}"
        if not isinstance(item, list) or len(item) != 3:
            raise DSLMError(f"{where}: expected [turns, questions, id], got {str(item)[:60]!r}")
        turns, questions, _id = item
        if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns) or not turns:
            raise DSLMError(f"{where}: turns must be a non-empty list of strings")
        if not isinstance(questions, list) or not questions:
            raise DSLMError(f"{where}: questions must be a non-empty list")
        dialogue = "\n".join(turns)
        for j, q in enumerate(questions):
            qw = f"{where} (item {_id!r}, question {j})"
            if not isinstance(q, dict):
                raise DSLMError(f"{qw}: expected an object")
            for key in ("question", "choice", "answer"):
                if key not in q:
                    raise DSLMError(f"{qw}: missing field {key!r}")
            choice = q["choice"]
            if not isinstance(choice, list) or len(choice) < 2 or not all(isinstance(c, str) for c in choice):
                raise DSLMError(f"{qw}: 'choice' must be a list of at least 2 strings")
            if q["answer"] not in choice:
                raise DSLMError(f"{qw}: answer {q['answer']!r} is not one of the choices")
            out.append(Example(text=dialogue, query=str(q["question"]), options=tuple(choice),
                               label=choice.index(q["answer"]), where=qw))
    if not out:
        raise DSLMError(f"{path} holds no examples")
    return out


# -------------------------------------------------------------------------------------- bAbI
def read_babi(path: str | Path) -> list[tuple[Example, str]]:
    """(example with label -1, answer string) per question; the story is the statements of the
    current story before the question, joined with spaces. Labels are assigned by `load_task`."""
    path = Path(path)
    out: list[tuple[Example, str]] = []
    story: list[str] = []
    prev = 0
    for i, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        m = re.match(r"^(\d+) (.*)$", line)
        if not m:
            raise DSLMError(f"{path}:{i}: expected '<id> <text>', got {line[:60]!r}")
        num, rest = int(m.group(1)), m.group(2)
        if num == 1:
            story = []
        elif num != prev + 1:
            raise DSLMError(f"{path}:{i}: line id {num} does not follow {prev}")
        prev = num
        if "\t" in rest:
            fields = rest.split("\t")
            if len(fields) < 2 or not fields[0].strip() or not fields[1].strip():
                raise DSLMError(f"{path}:{i}: a question line needs 'question<TAB>answer<TAB>supporting ids'")
            ex = Example(text=" ".join(story), query=fields[0].strip(), label=-1, where=f"{path}:{i}")
            out.append((ex, fields[1].strip()))
        else:
            story.append(rest.strip())
    if not out:
        raise DSLMError(f"{path} holds no questions")
    return out


def _babi_files(root: Path, n: int) -> tuple[Path, Path]:
    found = {}
    for split in ("train", "test"):
        hits = sorted((root / "en").glob(f"qa{n}_*_{split}.txt"))
        if len(hits) != 1:
            raise DSLMError(f"expected one file {root}/en/qa{n}_*_{split}.txt, found {len(hits)}")
        found[split] = hits[0]
    return found["train"], found["test"]


def _seeded_split(items: list, sizes: Sequence[int], key: str) -> list[list]:
    order = list(range(len(items)))
    random.Random(f"{SPLIT_SEED}-{key}").shuffle(order)
    out, start = [], 0
    for n in sizes:
        out.append([items[i] for i in sorted(order[start:start + n])])
        start += n
    return out


# ---------------------------------------------------------------------------------- load_task
def load_task(name: str, data_dir: str | Path | None = None) -> TaskData:
    """The task `name` (one of `TASKS`) read from the data root ``data_dir`` (the folder with sst2/, boolq/,
    ...; default ``$DSLM_DATA`` or ``./data``, see `deepscalelm.datasets.data_root`)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; tasks: sst2, boolq, dream, babi-qa1 ... babi-qa20")
    if name == "sst2":
        splits = {s: read_sst2(dataset_dir("sst2", data_dir) / f"stsa.binary.{s}") for s in ("train", "dev", "test")}
        return TaskData(name, "classification", 2, splits, ["negative", "positive"],
                        note="SST-2 (Kim 2014 sentence-level files): own train/dev/test")
    if name == "boolq":
        exs = read_boolq(dataset_dir("boolq", data_dir) / "dev.jsonl")
        if len(exs) < sum(BOOLQ_SPLIT):
            raise DSLMError(f"boolq/dev.jsonl has {len(exs)} examples, the split needs {sum(BOOLQ_SPLIT)}")
        tr, dv, te = _seeded_split(exs, BOOLQ_SPLIT, "boolq")
        return TaskData(name, "classification", 2, {"train": tr, "dev": dv, "test": te}, ["no", "yes"],
                        truncate="head",
                        note=f"BoolQ official dev.jsonl split {BOOLQ_SPLIT[0]}/{BOOLQ_SPLIT[1]}/{BOOLQ_SPLIT[2]} "
                             f"(train/dev/test, seed {SPLIT_SEED}); not comparable with published BoolQ dev scores")
    if name == "dream":
        splits = {s: read_dream(dataset_dir("dream", data_dir) / f"{s}.json") for s in ("train", "dev", "test")}
        n = len(splits["train"][0].options or ())
        return TaskData(name, "multiple_choice", n, splits, truncate="head",
                        note="DREAM: own train/dev/test; 3 options, chance 33.3%")
    n = int(name[len("babi-qa"):])
    train_f, test_f = _babi_files(dataset_dir("babi", data_dir), n)
    train_raw, test_raw = read_babi(train_f), read_babi(test_f)
    answers = sorted({a for _, a in train_raw})
    index = {a: i for i, a in enumerate(answers)}

    def label(items: list[tuple[Example, str]]) -> list[Example]:
        out = []
        for ex, a in items:
            if a not in index:
                raise DSLMError(f"{ex.where}: answer {a!r} is outside the head's range (the {len(answers)} "
                                f"answers of the training file {train_f.name})")
            out.append(Example(text=ex.text, query=ex.query, label=index[a], where=ex.where))
        return out

    tr_all = label(train_raw)
    n_dev = max(1, len(tr_all) // 10)
    dv, tr = _seeded_split(tr_all, [n_dev, len(tr_all) - n_dev], name)
    return TaskData(name, "classification", len(answers), {"train": tr, "dev": dv, "test": label(test_raw)},
                    answers, truncate="tail",
                    note=f"bAbI {train_f.name}: 10% of train (seed {SPLIT_SEED}) as dev, own test; "
                         "story truncated keeping its end")


from .files import TASK_TYPES, load_files  # noqa: E402  (files.py builds on the readers above)

__all__ = ["Example", "TaskData", "TASKS", "KINDS", "BOOLQ_SPLIT", "SPLIT_SEED", "load_task", "check_labels",
           "read_sst2", "read_boolq", "read_dream", "read_babi", "load_files", "TASK_TYPES"]
