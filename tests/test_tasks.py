"""Task readers: formats, clear errors naming file and line, label ranges, seeded splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deepscalelm.datasets import data_root
from deepscalelm.errors import DSLMError
from deepscalelm.tasks import BOOLQ_SPLIT, Example, TaskData, load_task, read_babi, read_boolq, read_dream, read_sst2

DATA = data_root()  # $DSLM_DATA, else ./data


def write(p: Path, text: str) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")
    return p


def test_sst2_reads_and_names_bad_line(tmp_path: Path) -> None:
    f = write(tmp_path / "s.train", "1 a good film .\n0 bad .\n")
    exs = read_sst2(f)
    assert [(e.label, e.text) for e in exs] == [(1, "a good film ."), (0, "bad .")]
    assert exs[1].where.endswith("s.train:2")
    bad = write(tmp_path / "b.train", "1 fine\n0 fine\nnolabelhere\n")
    with pytest.raises(DSLMError, match=r"b\.train:3"):
        read_sst2(bad)
    bad = write(tmp_path / "c.train", "1 fine\n2 out of range\n")
    with pytest.raises(DSLMError, match=r"c\.train:2.*label must be 0 or 1"):
        read_sst2(bad)
    with pytest.raises(DSLMError, match="does not exist"):
        read_sst2(tmp_path / "missing")


def test_boolq_missing_field_and_bad_answer(tmp_path: Path) -> None:
    good = {"question": "is it", "passage": "it is.", "answer": True}
    f = write(tmp_path / "d.jsonl", json.dumps(good) + "\n" + json.dumps({**good, "answer": False}) + "\n")
    exs = read_boolq(f)
    assert [e.label for e in exs] == [1, 0] and exs[0].query == "is it"
    f = write(tmp_path / "m.jsonl", json.dumps(good) + "\n" + json.dumps({"question": "q", "answer": True}) + "\n")
    with pytest.raises(DSLMError, match=r"m\.jsonl:2: missing field 'passage'"):
        read_boolq(f)
    f = write(tmp_path / "a.jsonl", json.dumps({**good, "answer": "yes"}) + "\n")
    with pytest.raises(DSLMError, match=r"a\.jsonl:1: 'answer' must be true or false"):
        read_boolq(f)
    f = write(tmp_path / "j.jsonl", json.dumps(good) + "\n{not json\n")
    with pytest.raises(DSLMError, match=r"j\.jsonl:2: not valid JSON"):
        read_boolq(f)


def test_dream_line_numbers_and_fields(tmp_path: Path) -> None:
    item = [["M: hi", "W: hello"], [{"question": "who?", "choice": ["a", "b", "c"], "answer": "b"}], "1-1"]
    f = write(tmp_path / "t.json", json.dumps([item, item], indent=1))
    exs = read_dream(f)
    assert len(exs) == 2 and exs[0].label == 1 and exs[0].options == ("a", "b", "c")
    assert exs[0].text == "M: hi\nW: hello"
    second_line = int(exs[1].where.split(":")[-1].split(" ")[0])
    text = f.read_text().splitlines()
    assert text[second_line - 1].strip() == "[" and second_line > 2
    bad = [item, [["M: x"], [{"question": "q", "choice": ["a", "b", "c"]}], "2-2"]]
    f = write(tmp_path / "b.json", json.dumps(bad, indent=1))
    with pytest.raises(DSLMError, match=r"b\.json:\d+ \(item '2-2', question 0\): missing field 'answer'"):
        read_dream(f)
    bad = [[["M: x"], [{"question": "q", "choice": ["a", "b", "c"], "answer": "z"}], "3-3"]]
    with pytest.raises(DSLMError, match="not one of the choices"):
        read_dream(write(tmp_path / "c.json", json.dumps(bad)))


BABI = ("1 Mary moved to the bathroom.\n2 John went to the hallway.\n3 Where is Mary? \tbathroom\t1\n"
        "4 Daniel went back to the hallway.\n5 Where is Daniel? \thallway\t4\n"
        "1 Sandra journeyed to the garden.\n2 Where is Sandra? \tgarden\t1\n")


def test_babi_stories_and_unseen_answer(tmp_path: Path) -> None:
    f = write(tmp_path / "en" / "qa1_x_train.txt", BABI)
    items = read_babi(f)
    assert [a for _, a in items] == ["bathroom", "hallway", "garden"]
    assert items[1][0].text == "Mary moved to the bathroom. John went to the hallway. Daniel went back to the hallway."
    assert items[2][0].text == "Sandra journeyed to the garden."  # a line numbered 1 starts a new story
    with pytest.raises(DSLMError, match=r"y_train\.txt:3: line id 4 does not follow 2"):
        read_babi(write(tmp_path / "en" / "y_train.txt", "1 a.\n2 b.\n4 c?\tx\t1\n"))
    # an answer of the test file that the training file never gives is outside the head's range
    root = tmp_path / "data"
    write(root / "babi" / "en" / "qa1_x_train.txt", BABI * 2)
    write(root / "babi" / "en" / "qa1_x_test.txt", "1 Bob went to the moon.\n2 Where is Bob? \tmoon\t1\n")
    with pytest.raises(DSLMError, match=r"qa1_x_test\.txt:2: answer 'moon' is outside the head's range"):
        load_task("babi-qa1", root)


def test_taskdata_label_range_and_options() -> None:
    with pytest.raises(DSLMError, match=r"f:7: label 3 is outside the head's range \[0, 1\]"):
        TaskData("t", "classification", 2, {"train": [Example("x", 3, where="f:7")]})
    with pytest.raises(DSLMError, match="scores 3 options, this question has 2"):
        TaskData("t", "multiple_choice", 3, {"train": [Example("x", 0, "q", ("a", "b"), "f:1")]})
    with pytest.raises(ValueError, match="unknown task"):
        load_task("mnli", DATA)


@pytest.mark.skipif(not (DATA / "sst2").is_dir(), reason="data sets not under $DSLM_DATA (see docs/data.md)")
def test_real_tasks_sizes_and_seeded_boolq_split() -> None:
    sst = load_task("sst2", DATA)
    assert {k: len(v) for k, v in sst.splits.items()} == {"train": 6920, "dev": 872, "test": 1821}
    bq = load_task("boolq", DATA)
    assert tuple(len(bq.splits[s]) for s in ("train", "dev", "test")) == BOOLQ_SPLIT
    wheres = [{e.where for e in bq.splits[s]} for s in ("train", "dev", "test")]
    assert not (wheres[0] & wheres[1]) and not (wheres[0] & wheres[2]) and not (wheres[1] & wheres[2])
    assert [e.where for e in load_task("boolq", DATA).splits["dev"]] == [e.where for e in bq.splits["dev"]]
    b = load_task("babi-qa1", DATA)
    assert b.n_labels == 6 and len(b.splits["dev"]) == 100 and b.truncate == "tail"
    sub = sst.subset({"train": 50, "dev": None, "test": 10})
    assert len(sub.splits["train"]) == 50 and len(sub.splits["dev"]) == 872
    assert [e.where for e in sub.splits["train"]] == [e.where for e in sst.subset({"train": 50}).splits["train"]]
