"""A task built from the user's own files: classification, text-pair classification, multiple choice.

Files are JSON lines (``.jsonl``, ``.ndjson``; ``.json`` may also be one JSON array of objects) or
CSV/TSV with a header row (``.csv``, ``.tsv``). Columns (other columns are ignored):

* ``classification``: ``text``, ``label``;
* ``pair``: ``text_a``, ``text_b``, ``label`` (encoded as ``BOS text_a SEP text_b EOS``; ``text_b``
  is the part cut when the input is too long);
* ``choice`` (multiple choice): ``question``, ``choices`` (a list of at least 2 distinct strings; in
  CSV a JSON-encoded list such as ``["red", "blue"]``), ``answer`` (the 0-based index of the correct
  choice, or its text), optional ``context`` (a passage the question is about). Every question of a
  task must have the same number of choices.

Labels are strings or integers (``1`` and ``"1"`` are the same label). Class ids are assigned
deterministically from the labels of the training file, sorted: numerically when every label is an
integer, otherwise as strings. Dev and test labels must occur in the training file. In CSV an
``answer`` that equals one of the choices is that choice, otherwise it must be an integer index.

The task type is inferred from the training file's columns (``choices`` -> choice, ``text_a`` or
``text_b`` -> pair, ``text`` -> classification) unless given. Without a dev file, a seeded
``dev_frac`` of the training examples (at least one) is held out as dev. Every malformed row raises
`DSLMError` naming ``file:line`` (1-based; in CSV the header is line 1 and a row is named by the line
it starts on).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import DSLMError
from . import SPLIT_SEED, Example, TaskData, _json_array_items, _seeded_split

TASK_TYPES = ("classification", "pair", "choice")
COLUMNS = {"classification": ("text", "label"), "pair": ("text_a", "text_b", "label"),
           "choice": ("question", "choices", "answer")}
JSONL_EXT = (".jsonl", ".ndjson", ".json")
CSV_EXT = {".csv": ",", ".tsv": "\t"}
#: fraction of the training examples held out as dev when no dev file is given
DEV_FRAC = 0.1
_INT = re.compile(r"^[+-]?\d+$")

Record = tuple[int, dict[str, object]]  # (1-based line, fields)


@dataclass(frozen=True)
class Table:
    """The records of one file. ``typed``: values keep their JSON types (False for CSV: all strings);
    ``header`` and ``header_line``: the CSV header row and its line (None / 0 for JSON)."""

    path: Path
    records: list[Record]
    typed: bool
    header: tuple[str, ...] | None = None
    header_line: int = 0

    @property
    def columns(self) -> list[str]:
        """The header's columns (CSV) or the first record's keys (JSON)."""
        return list(self.header) if self.header is not None else list(self.records[0][1]) if self.records else []


def _read_text(path: Path) -> str:
    if not path.exists():
        raise DSLMError(f"data file {path} does not exist")
    if not path.is_file():
        raise DSLMError(f"data file {path} is {'a directory' if path.is_dir() else 'not a regular file'}: "
                        "pass a JSONL, JSON or CSV/TSV file")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DSLMError(f"{path}: not UTF-8 text ({exc})") from None


def _jsonl_table(path: Path, text: str) -> Table:
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        items = _json_array_items(path)
    else:
        items = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                items.append((i, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DSLMError(f"{path}:{i}: not valid JSON ({exc.msg})") from None
    for lineno, rec in items:
        if not isinstance(rec, dict):
            raise DSLMError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
    return Table(path, list(items), typed=True)  # type: ignore[arg-type]  # all dicts, checked above


def _csv_table(path: Path, text: str, delimiter: str) -> Table:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    out: list[Record] = []
    start, header_line = 1, 0
    try:
        for row in reader:
            line, start = start, reader.line_num + 1
            if not row or all(not f.strip() for f in row):
                continue
            if header is None:
                header, header_line = [h.strip() for h in row], line
                dup = sorted({h for h in header if header.count(h) > 1})
                if dup:
                    raise DSLMError(f"{path}:{line}: duplicate column(s) {', '.join(dup)} in the header")
                continue
            if len(row) != len(header):
                raise DSLMError(f"{path}:{line}: {len(row)} fields, the header has {len(header)}")
            out.append((line, dict(zip(header, row, strict=True))))
    except csv.Error as exc:
        raise DSLMError(f"{path}:{reader.line_num}: bad CSV ({exc})") from None
    if header is None:
        raise DSLMError(f"{path} is empty: expected a header row and examples")
    return Table(path, out, typed=False, header=tuple(header), header_line=header_line)


def read_table(path: str | Path) -> Table:
    """The records of a JSONL/JSON/CSV/TSV file, by its extension; DSLMError for a malformed line."""
    path = Path(path).expanduser()
    ext = path.suffix.lower()
    if ext not in JSONL_EXT and ext not in CSV_EXT:
        raise DSLMError(f"{path}: unknown file type {ext or '(none)'!r}; use one of "
                        f"{', '.join(JSONL_EXT + tuple(CSV_EXT))}")
    text = _read_text(path)
    return _jsonl_table(path, text) if ext in JSONL_EXT else _csv_table(path, text, CSV_EXT[ext])


def infer_task_type(columns: Sequence[str], where: str) -> str:
    """The task type the columns describe (see module docstring); DSLMError if none fits."""
    cols = set(columns)
    if "choices" in cols:
        return "choice"
    if "text_a" in cols or "text_b" in cols:
        return "pair"
    if "text" in cols:
        return "classification"
    raise DSLMError(f"{where}: cannot infer the task type from columns {sorted(cols)}: expected text,label "
                    "(classification), text_a,text_b,label (pair) or question,choices,answer (choice); "
                    "or pass --task-type")


# --------------------------------------------------------------------------------- fields
def _field(rec: dict[str, object], key: str, where: str) -> object:
    v = rec.get(key)
    if v is None:
        raise DSLMError(f"{where}: missing column {key!r}")
    return v


def _text(rec: dict[str, object], key: str, where: str) -> str:
    v = _field(rec, key, where)
    if not isinstance(v, str):
        raise DSLMError(f"{where}: {key!r} must be a string, got {type(v).__name__}")
    if not v.strip():
        raise DSLMError(f"{where}: empty {key!r}")
    return v


def _label_key(rec: dict[str, object], where: str) -> str:
    """The label as a string key: an integer or a non-empty string (surrounding spaces dropped)."""
    v = _field(rec, "label", where)
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise DSLMError(f"{where}: bad label {v!r}: expected a string or an integer")
    key = str(v).strip()
    if not key:
        raise DSLMError(f"{where}: bad label {v!r}: empty")
    return key


def _choices(rec: dict[str, object], typed: bool, where: str) -> tuple[str, ...]:
    v = _field(rec, "choices", where)
    if not typed:
        try:
            v = json.loads(str(v))
        except json.JSONDecodeError:
            raise DSLMError(f"{where}: 'choices' must be a JSON-encoded list such as [\"a\", \"b\"], "
                            f"got {str(v)[:60]!r}") from None
    if not isinstance(v, list) or len(v) < 2 or not all(isinstance(c, str) and c.strip() for c in v):
        raise DSLMError(f"{where}: 'choices' must be a list of at least 2 non-empty strings, got {str(v)[:60]!r}")
    if len(set(v)) != len(v):
        raise DSLMError(f"{where}: 'choices' has duplicates: {v}")
    return tuple(v)


def _answer(rec: dict[str, object], choices: tuple[str, ...], typed: bool, where: str) -> int:
    v = _field(rec, "answer", where)
    if isinstance(v, str) and v in choices:
        return choices.index(v)
    if isinstance(v, int) and not isinstance(v, bool):
        idx = v
    elif not typed and isinstance(v, str) and _INT.match(v.strip()):
        idx = int(v)
    else:
        raise DSLMError(f"{where}: unknown answer {v!r}: expected one of the choices {list(choices)} or "
                        f"an index 0..{len(choices) - 1}")
    if not 0 <= idx < len(choices):
        raise DSLMError(f"{where}: unknown answer {v!r}: index outside 0..{len(choices) - 1}")
    return idx


def sort_labels(keys: set[str]) -> list[str]:
    """Class names in class-id order: numerically if every label is an integer, else as strings."""
    if all(_INT.match(k) for k in keys):
        return sorted(keys, key=lambda k: (int(k), k))
    return sorted(keys)


# ---------------------------------------------------------------------------------- files
def _read_file(table: Table, task_type: str) -> list[tuple[Example, str | None]]:
    """(example, label key) per row; classification examples carry label -1 until mapped."""
    path, typed = table.path, table.typed
    if table.header is not None:  # CSV: a missing column is an error of the header line
        for key in COLUMNS[task_type]:
            if key not in table.header:
                raise DSLMError(f"{path}:{table.header_line}: missing column {key!r} "
                                f"(columns: {', '.join(table.header)})")
    if not table.records:
        raise DSLMError(f"{path} holds no examples")
    out: list[tuple[Example, str | None]] = []
    for line, rec in table.records:
        where = f"{path}:{line}"
        if task_type == "choice":
            choices = _choices(rec, typed, where)
            ctx = rec.get("context")
            if ctx is not None and not isinstance(ctx, str):
                raise DSLMError(f"{where}: 'context' must be a string, got {type(ctx).__name__}")
            ex = Example(text=(ctx or "").strip(), query=_text(rec, "question", where), options=choices,
                         label=_answer(rec, choices, typed, where), where=where)
            out.append((ex, None))
        elif task_type == "pair":
            a, b = _text(rec, "text_a", where), _text(rec, "text_b", where)
            out.append((Example(text=b, query=a, label=-1, where=where), _label_key(rec, where)))
        else:
            out.append((Example(text=_text(rec, "text", where), label=-1, where=where), _label_key(rec, where)))
    return out


def _map_labels(rows: list[tuple[Example, str | None]], index: dict[str, int], source: str) -> list[Example]:
    out = []
    for ex, key in rows:
        if key not in index:
            raise DSLMError(f"{ex.where}: bad label {key!r}: not a label of {source} ({', '.join(index)})")
        out.append(Example(text=ex.text, query=ex.query, label=index[key], where=ex.where))
    return out


def _check_n_choices(rows: Sequence[tuple[Example, str | None]], first: Example) -> None:
    k = len(first.options or ())
    for ex, _ in rows:
        if len(ex.options or ()) != k:
            raise DSLMError(f"{ex.where}: {len(ex.options or ())} choices, the first question ({first.where}) "
                            f"has {k}; every question needs the same number")


def load_files(train: str | Path | None, dev: str | Path | None = None, test: str | Path | None = None, *,
               task_type: str | None = None, dev_frac: float = DEV_FRAC, seed: int = SPLIT_SEED,
               label_names: Sequence[str] | None = None) -> TaskData:
    """A `TaskData` from the user's files (see module docstring).

    ``train`` may be None only when ``label_names`` is given (evaluating a fine-tuned checkpoint,
    whose class names fix the label mapping) or for multiple choice. Without ``dev``, a seeded
    ``dev_frac`` of ``train`` (at least 1 example, ``seed``) becomes dev; without ``test`` there is no
    test split.
    """
    paths = {s: Path(p).expanduser() for s, p in (("train", train), ("dev", dev), ("test", test)) if p is not None}
    if not paths:
        raise ValueError("give at least one data file (train, dev or test)")
    if task_type is not None and task_type not in TASK_TYPES:
        raise ValueError(f"task_type must be one of {TASK_TYPES}, got {task_type!r}")
    if not 0.0 < dev_frac < 1.0:
        raise ValueError(f"dev_frac must be in (0, 1), got {dev_frac!r}")
    tables = {s: read_table(p) for s, p in paths.items()}
    first = next(iter(paths.values()))
    if task_type is None:
        t = tables[next(iter(tables))]
        line = t.header_line or (t.records[0][0] if t.records else 1)
        task_type = infer_task_type(t.columns, f"{first}:{line}")
    rows = {s: _read_file(t, task_type) for s, t in tables.items()}
    kind = "multiple_choice" if task_type == "choice" else "classification"
    if kind == "multiple_choice":
        ref = rows[next(iter(rows))][0][0]
        for r in rows.values():
            _check_n_choices(r, ref)
        splits = {s: [ex for ex, _ in r] for s, r in rows.items()}
        n_labels, names = len(ref.options or ()), []
    else:
        if label_names is not None:
            names, source = [str(n) for n in label_names], "the fine-tuned checkpoint"
        elif "train" in rows:
            names, source = sort_labels({k for _, k in rows["train"] if k is not None}), f"the training file {first}"
        else:
            raise ValueError("a classification task needs the training file (it fixes the label mapping)")
        if len(names) < 2:
            raise DSLMError(f"{first}: only {len(names)} distinct label ({', '.join(names)}); classification needs "
                            "at least 2")
        index = {n: i for i, n in enumerate(names)}
        splits = {s: _map_labels(r, index, source) for s, r in rows.items()}
        n_labels = len(names)
    note = f"{task_type} from files ({', '.join(f'{s} {p.name}' for s, p in paths.items())})"
    if "dev" not in splits and "train" in splits:
        tr = splits["train"]
        if len(tr) < 2:
            raise DSLMError(f"{paths['train']}: {len(tr)} example; holding out a dev split needs at least 2")
        n_dev = max(1, round(dev_frac * len(tr)))
        n_dev = min(n_dev, len(tr) - 1)
        dv, kept = _seeded_split(tr, [n_dev, len(tr) - n_dev], f"files-{seed}")
        splits = {"train": kept, "dev": dv, **{k: v for k, v in splits.items() if k != "train"}}
        note += f"; dev = {n_dev} of {len(tr)} training examples (seed {seed})"
    if "test" not in splits:
        note += "; no test file: dev accuracy only"
    return TaskData(first.stem, kind, n_labels, splits, names, truncate="head", note=note)


__all__ = ["TASK_TYPES", "COLUMNS", "DEV_FRAC", "load_files", "read_table", "Table", "infer_task_type", "sort_labels"]
