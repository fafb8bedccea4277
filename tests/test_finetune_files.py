"""Fine-tuning on the user's own files: formats, label mapping, dev split, file:line errors, CLI, max-len clamp."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import torch
from test_finetune import make_ckpt  # tests/ is on sys.path

from deepscalelm.cli import main as cli_main
from deepscalelm.errors import DSLMError
from deepscalelm.finetune import FinetuneConfig, evaluate_checkpoint, finetune
from deepscalelm.tasks import load_files
from deepscalelm.train import checkpoint as ck

torch.set_num_threads(1)
QUIET = {"log": lambda _m: None}


def write_jsonl(p: Path, rows: list[dict]) -> Path:
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return p


def write_csv(p: Path, header: list[str], rows: list[list[object]]) -> Path:
    with p.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return p


def letters(n: int, seed: int) -> list[dict]:
    """Texts of 'a's are 'pos', of 'b's 'neg' (learnable in a few dozen steps)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        y = rng.randrange(2)
        out.append({"text": ("a" if y else "b") * rng.randint(4, 12), "label": "pos" if y else "neg", "id": 7})
    return out


def choice_rows(n: int, seed: int) -> list[list[object]]:
    """CSV rows (question, choices, answer): the answer is 'yes' among 'no's; given as text or as index."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        y = rng.randrange(3)
        choices = ["yes" if j == y else f"no{j}" for j in range(3)]
        rows.append(["which?", json.dumps(choices), "yes" if i % 2 else y])
    return rows


def cli_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    assert cli_main(argv + ["--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_classification_jsonl_end_to_end_via_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = make_ckpt(tmp_path / "pre", seq_len=32)
    train = write_jsonl(tmp_path / "train.jsonl", letters(80, 0))
    test = write_jsonl(tmp_path / "test.jsonl", letters(40, 1))
    out = tmp_path / "ft"
    # default --max-len 128 on a seq_len-32 checkpoint: clamped, not an error
    res = cli_json(["finetune", str(ckpt), "--train", str(train), "--test", str(test), "--out", str(out),
                    "--lrs", "3e-3", "--seeds", "0", "--epochs", "4", "--save", "best"], capsys)
    assert res["sizes"] == {"train": 72, "dev": 8, "test": 40} and res["n_labels"] == 2
    assert res["config"]["max_len"] == 32 and "max_len 128 clamped to seq_len 32" in res["note"]
    assert res["test_mean"] > 0.9 and res["majority_test_acc"] < 0.75
    run = json.loads((out / "results.json").read_text())["runs"][0]
    state = ck.read_state(ck.resolve_checkpoint(out / run["checkpoint"]))
    assert state["finetune"]["label_names"] == ["neg", "pos"] and state["finetune"]["task"] == "train"
    # --eval on the user's test file reproduces the run's test accuracy
    ev = cli_json(["finetune", str(out / run["checkpoint"]), "--eval", "--test", str(test)], capsys)
    assert ev["accuracy"] == pytest.approx(run["test_acc"]) and ev["n"] == 40


def test_pair_csv_with_integer_labels_sorted_numerically(tmp_path: Path) -> None:
    rng = random.Random(3)

    def rows(n: int) -> list[list[object]]:  # the label is decided by text_a; text_b is filler
        out = []
        for _ in range(n):
            y = rng.randrange(2)
            out.append([("a" if y else "b") * rng.randint(3, 8), "x" * rng.randint(1, 6), 10 if y else 2])
        return out

    train = write_csv(tmp_path / "tr.csv", ["text_a", "text_b", "label"], rows(80))
    dev = write_csv(tmp_path / "dv.csv", ["text_a", "text_b", "label"], rows(24))
    td = load_files(train, dev)
    assert td.kind == "classification" and td.label_names == ["2", "10"]  # not the string order 10 < 2
    ex = td.splits["train"][0]
    assert ex.query and set(ex.query) <= {"a", "b"} and set(ex.text) == {"x"}
    assert ex.label == (1 if ex.query[0] == "a" else 0) and ex.where == f"{train}:2"
    cfg = FinetuneConfig(lrs=(3e-3,), seeds=(0,), epochs=4, max_len=24, save="none")
    res = finetune(make_ckpt(tmp_path / "pre"), td, None, cfg, **QUIET)
    assert res["dev_mean"] > 0.9 and res["test_mean"] is None and res["majority_test_acc"] is None
    assert "no test file" in res["note"]


def test_multiple_choice_csv_and_decoder(tmp_path: Path) -> None:
    head = ["question", "choices", "answer"]
    train = write_csv(tmp_path / "mc.csv", head, choice_rows(64, 0))
    test = write_csv(tmp_path / "mc_test.csv", head, choice_rows(32, 1))
    td = load_files(train, None, test)
    assert td.kind == "multiple_choice" and td.n_labels == 3 and len(td.splits["dev"]) == 6
    first = td.splits["train"][0]
    assert first.text == "" and first.options is not None and first.options[first.label] == "yes"
    cfg = FinetuneConfig(lrs=(3e-3,), seeds=(0,), epochs=4, batch_size=8, max_len=32, save="none")
    res = finetune(make_ckpt(tmp_path / "pre", arch="decoder"), td, None, cfg, **QUIET)
    assert res["test_mean"] > 0.9 and res["kind"] == "multiple_choice"


def test_jsonl_choice_with_context_and_json_array(tmp_path: Path) -> None:
    rows = [{"question": "q?", "choices": ["x", "y"], "answer": 1, "context": "ctx"},
            {"question": "r?", "choices": ["x", "y"], "answer": "x"}]
    a = load_files(write_jsonl(tmp_path / "a.jsonl", rows + rows))
    arr = tmp_path / "b.json"
    arr.write_text(json.dumps(rows + rows, indent=1), encoding="utf-8")
    b = load_files(arr)
    for td in (a, b):
        exs = td.splits["train"] + td.splits["dev"]
        assert sorted((e.query, e.label, e.text) for e in exs) == [("q?", 1, "ctx")] * 2 + [("r?", 0, "")] * 2


def test_labels_and_dev_split_are_deterministic(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}", "label": lab} for i, lab in enumerate([1, "1", 0, 2, "0", 2] * 5)]
    f = write_jsonl(tmp_path / "l.jsonl", rows)
    a, b = load_files(f), load_files(f)
    assert a.label_names == ["0", "1", "2"]  # 1 and "1" are one label
    assert [e.where for e in a.splits["dev"]] == [e.where for e in b.splits["dev"]] and len(a.splits["dev"]) == 3
    assert sorted(e.where for e in a.splits["train"] + a.splits["dev"]) == sorted(f"{f}:{i}" for i in range(1, 31))
    assert {e.where for e in load_files(f, dev_frac=0.5).splits["dev"]} != {e.where for e in a.splits["dev"]}
    mixed = write_jsonl(tmp_path / "m.jsonl", [{"text": "x", "label": v} for v in ["b", 10, "a", 9]])
    assert load_files(mixed).label_names == ["10", "9", "a", "b"]  # not all integers: string order


BAD = [  # (file name, content, expected error after the path)
    ("a.jsonl", '{"text": "x", "label": 1}\n{"text": "y", "label": 0}\n{"text": "z"}\n', r":3: missing column 'label'"),
    ("b.jsonl", '{"text": "x", "label": 1}\n{"text": "  ", "label": 0}\n', r":2: empty 'text'"),
    ("c.jsonl", '{"text": "x", "label": 1.5}\n', r":1: bad label 1.5"),
    ("d.jsonl", '{"text": "x", "label": true}\n', r":1: bad label True"),
    ("e.jsonl", '{"text": "x", "label": 1}\n\n{not json\n', r":3: not valid JSON"),
    ("f.csv", "text,lab\nx,1\n", r":1: missing column 'label' \(columns: text, lab\)"),
    ("g.csv", "text,label\nx,1\ny,\n", r":3: bad label '': empty"),
    ("h.csv", 'text,label\nx,1\n"two\nlines",0\nz\n', r":5: 1 fields, the header has 2"),
    ("i.csv", 'text_a,text_b,label\nx,y,1\nx,,0\n', r":3: empty 'text_b'"),
    ("j.csv", 'question,choices,answer\nq,"[""a"", ""b""]",c\n', r":2: unknown answer 'c'"),
    ("k.csv", 'question,choices,answer\nq,"[""a"", ""b""]",5\n', r":2: unknown answer '5': index outside 0..1"),
    ("l.csv", "question,choices,answer\nq,a|b,0\n", r":2: 'choices' must be a JSON-encoded list"),
    ("m.jsonl", '{"question": "q", "choices": ["a", "b"], "answer": 0}\n'
                '{"question": "q", "choices": ["a", "b", "c"], "answer": 0}\n', r":2: 3 choices, the first question"),
    ("n.jsonl", '{"question": "q", "choices": ["a", "a"], "answer": 0}\n', r":1: 'choices' has duplicates"),
    ("o.jsonl", '{"text": "x", "label": 1}\n{"text": "y", "label": 1}\n', r": only 1 distinct label \(1\)"),
    ("p.jsonl", '{"sentence": "x", "label": 1}\n', r":1: cannot infer the task type from columns"),
    ("q.txt", "1 x\n", r": unknown file type '.txt'"),
    ("r.csv", "", r" is empty: expected a header row"),
]


@pytest.mark.parametrize("name,content,err", BAD, ids=[b[0] for b in BAD])
def test_malformed_rows_name_file_and_line(tmp_path: Path, name: str, content: str, err: str) -> None:
    f = tmp_path / name
    f.write_text(content, encoding="utf-8")
    with pytest.raises(DSLMError, match=f"^{f}{err}"):
        load_files(f)


def test_dev_label_must_occur_in_train_and_type_is_checked(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "t.jsonl", [{"text": "x", "label": "a"}, {"text": "y", "label": "b"}])
    dev = write_jsonl(tmp_path / "d.jsonl", [{"text": "x", "label": "a"}, {"text": "z", "label": "c"}])
    with pytest.raises(DSLMError, match=rf"^{dev}:2: bad label 'c': not a label of the training file"):
        load_files(train, dev)
    with pytest.raises(DSLMError, match=rf"^{train}:1: missing column 'choices'"):
        load_files(train, task_type="choice")
    with pytest.raises(ValueError, match="task_type must be one of"):
        load_files(train, task_type="regression")


def test_cli_rejects_task_with_files_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = make_ckpt(tmp_path / "pre")
    train = write_jsonl(tmp_path / "t.jsonl", letters(10, 0))
    assert cli_main(["finetune", str(ckpt), "--task", "sst2", "--train", str(train), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--task and --train are mutually exclusive" in err
    assert cli_main(["finetune", str(ckpt), "--out", str(tmp_path / "o")]) == 2
    assert "give --task NAME" in capsys.readouterr().err
    assert cli_main(["finetune", str(ckpt), "--test", str(train), "--out", str(tmp_path / "o")]) == 2
    assert "needs --train FILE" in capsys.readouterr().err
    assert cli_main(["finetune", str(ckpt), "--train", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o")]) == 2
    assert "nope.csv does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_max_len_is_clamped_to_seq_len_with_a_note(tmp_path: Path) -> None:
    from test_finetune import toy_classification

    logs: list[str] = []
    cfg = FinetuneConfig(lrs=(1e-3,), seeds=(0,), epochs=1, max_len=128, save="all")
    res = finetune(make_ckpt(tmp_path / "pre", seq_len=16), toy_classification(32), tmp_path / "ft", cfg,
                   log=logs.append)
    assert logs[0] == "note: --max-len 128 exceeds the checkpoint's seq_len 16; using max_len 16"
    assert res["config"]["max_len"] == 16
    ev = evaluate_checkpoint(tmp_path / "ft" / res["runs"][0]["checkpoint"], toy_classification(32))
    assert ev["accuracy"] == pytest.approx(res["runs"][0]["test_acc"])


def test_tsv_with_bom_and_multiline_rows_keep_line_numbers(tmp_path: Path) -> None:
    f = tmp_path / "s.tsv"
    f.write_text('\ufefftext\tlabel\n\n"two\nlines"\tb\none\ta\n', encoding="utf-8")
    td = load_files(f, dev=f)
    assert [(e.where, e.text, e.label) for e in td.splits["train"]] == [
        (f"{f}:3", "two\nlines", 1), (f"{f}:5", "one", 0)]
