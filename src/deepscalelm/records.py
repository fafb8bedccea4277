"""One record schema for predicted and measured moments.

A `Trajectory` is an ordered list of `Record`s, one per sublayer of the residual stream: the embedding,
then each residual merge (attention, cross-attention, FFN) of each layer, then the final LayerNorm
(Pre-LN models). `deepscalelm.predict` and `deepscalelm.measure` both return one, so comparing them is
a join on the key ``(stack, layer, block)``.

Record fields (all moments are entry-wise over tokens × hidden units, the paper's moment definitions):

* ``stack``: ``""`` for single-stack models, ``"encoder"`` or ``"decoder"`` for encoder-decoders.
* ``layer``: 0 for the embedding, 1..N for the transformer layers; the final norm carries N.
* ``block``: ``"embedding"``, ``"attn"``, ``"cross_attn"``, ``"ffn"`` or ``"final_norm"``.
* ``mean``, ``var``, ``corr``: forward moments of the residual stream *after* that merge (Post-LN:
  after the merge's LayerNorm).
* ``grad_var``, ``grad_corr``: moments of d(loss)/d(stream) at the same point. Predictions seed a
  unit-variance, uncorrelated gradient at the model's output (the hidden state after the last
  norm); measurements use that protocol or the real loss.
* ``block_var``, ``block_corr``: moments of the block's own output F (after its dropout, before
  scaling by beta and merging); None for the embedding and the final norm.
* ``valid``: predictions only: False when the record's block drove a component outside the range where
  its formula was validated against Monte Carlo (e.g. attention at a large logit variance), True
  otherwise; None for measurements. ``Trajectory.validity()`` says which component and why.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

BLOCKS = ("embedding", "attn", "cross_attn", "ffn", "final_norm")


@dataclass(frozen=True)
class Record:
    """Moments of the residual stream after one sublayer (see module docstring for units)."""

    stack: str
    layer: int
    block: str
    mean: float
    var: float
    corr: float
    grad_var: float
    grad_corr: float
    block_var: float | None = None
    block_corr: float | None = None
    valid: bool | None = None

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.stack, self.layer, self.block)


RECORD_FIELDS = tuple(f.name for f in fields(Record))


def _clean(value: Any) -> Any:
    """JSON cannot hold NaN/inf; write them as strings that float() reads back."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


def _parse(name: str, value: Any) -> Any:
    if name in ("stack", "block"):
        return str(value)
    if name == "layer":
        return int(value)
    if value is None or value == "":
        return None
    if name == "valid":
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "1"):
            return True
        if str(value).lower() in ("false", "0"):
            return False
        raise ValueError(f"valid must be true, false or empty, got {value!r}")
    return float(value)


class Trajectory(Sequence[Record]):
    """Per-sublayer moments of one model, predicted or measured.

    ``source`` is ``"predicted"`` or ``"measured"``; ``meta`` holds free-form provenance
    (the config as a dict, the protocol, the batch shape...). Indexing and iteration give `Record`s.
    """

    def __init__(self, records: Iterable[Record], source: str = "predicted",
                 meta: dict[str, Any] | None = None) -> None:
        self.records: list[Record] = list(records)
        self.source = source
        self.meta: dict[str, Any] = dict(meta or {})

    # Sequence protocol
    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i):
        return self.records[i]

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def __repr__(self) -> str:
        return f"Trajectory(source={self.source!r}, records={len(self.records)})"

    # Selections
    def select(self, block: str | None = None, stack: str | None = None) -> Trajectory:
        """The records of one block type and/or stack, in order."""
        recs = [r for r in self.records if (block is None or r.block == block)
                and (stack is None or r.stack == stack)]
        return Trajectory(recs, self.source, self.meta)

    def column(self, name: str) -> list[Any]:
        """One field over all records, e.g. ``traj.column("var")``."""
        if name not in RECORD_FIELDS:
            raise ValueError(f"unknown record field {name!r}; fields: {', '.join(RECORD_FIELDS)}")
        return [getattr(r, name) for r in self.records]

    # Export
    def to_records(self) -> list[dict[str, Any]]:
        """The records as a list of plain dicts (keys: `RECORD_FIELDS`)."""
        return [asdict(r) for r in self.records]

    def to_json(self, path: str | Path | None = None) -> str:
        """JSON text ``{"source", "meta", "records"}``; written to ``path`` when given."""
        payload = {"source": self.source, "meta": self.meta,
                   "records": [{k: _clean(v) for k, v in d.items()} for d in self.to_records()]}
        text = json.dumps(payload, indent=1, default=str)
        if path is not None:
            _atomic_write(Path(path), text)
        return text

    def to_csv(self, path: str | Path | None = None) -> str:
        """CSV text with a header row of `RECORD_FIELDS`; written to ``path`` when given."""
        import io

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(RECORD_FIELDS), lineterminator="\n")
        writer.writeheader()
        for d in self.to_records():
            writer.writerow({k: ("" if v is None else v) for k, v in d.items()})
        text = buf.getvalue()
        if path is not None:
            _atomic_write(Path(path), text)
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> Trajectory:
        """Read what `to_json` wrote (a path or the JSON text itself)."""
        p = Path(text_or_path) if not str(text_or_path).lstrip().startswith("{") else None
        text = p.read_text() if p is not None else str(text_or_path)
        payload = json.loads(text)
        recs = [Record(**{k: _parse(k, d.get(k)) for k in RECORD_FIELDS}) for d in payload["records"]]
        return cls(recs, payload.get("source", "predicted"), payload.get("meta", {}))

    # Validity
    def validity(self) -> list[str]:
        """One line per component that left its validated range (empty when none did, and for
        measurements), from ``meta["warnings"]`` written by `deepscalelm.predict`."""
        return [str(w) for w in self.meta.get("warnings", [])]

    def invalid(self) -> Trajectory:
        """The records flagged ``valid=False``."""
        return Trajectory([r for r in self.records if r.valid is False], self.source, self.meta)

    # Comparison
    def join(self, other: Trajectory) -> list[tuple[Record, Record]]:
        """Pairs (self, other) of records with the same (stack, layer, block) key, in self's order."""
        index = {r.key: r for r in other.records}
        return [(r, index[r.key]) for r in self.records if r.key in index]


def _atomic_write(path: Path, text: str) -> None:
    """Write a text file through a temporary sibling and a rename, so no partial file is left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


__all__ = ["Record", "Trajectory", "RECORD_FIELDS", "BLOCKS"]
