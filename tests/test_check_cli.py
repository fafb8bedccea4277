"""``dslm check`` end to end: outputs, verdict exit status, clear errors (exit 2)."""

from __future__ import annotations

import json

import torch

from deepscalelm.cli import main

torch.set_num_threads(1)
SMALL = ["--n-layers", "3", "--d-model", "32", "--n-heads", "4", "--seq-len", "16", "--batch-size", "2"]


def test_check_writes_outputs(tmp_path, capsys):
    rc = main(["check", *SMALL, "--json", str(tmp_path / "r.json"), "--csv", str(tmp_path / "r.csv"),
               "--plot", str(tmp_path / "r.png")])
    out = capsys.readouterr().out
    assert rc == 0 and "tinyshakespeare" in out and "no problems found" in out
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["meta"]["predicted"] and len(data["rows"]) == 1 + 2 * 3 + 1
    assert (tmp_path / "r.png").stat().st_size > 10_000


def test_check_strict_fires_on_pathological_model(capsys):
    rc = main(["check", "--n-layers", "48", "--d-model", "32", "--n-heads", "4", "--seq-len", "16",
               "--batch-size", "2", "--scheme", "xavier", "--data", "random", "--strict"])
    out = capsys.readouterr().out
    assert rc == 1 and "grows linearly" in out


def test_check_errors_exit_2(tmp_path, capsys):
    assert main(["check", *SMALL, "--data", str(tmp_path / "missing.txt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["check", "--n-layers", "2", "--seq-len", "1", "--d-model", "16", "--n-heads", "2"]) == 2
    assert "at least 2 tokens" in capsys.readouterr().err
    assert main(["check", *SMALL, "--vocab-size", "100"]) == 2
    assert "vocab_size" in capsys.readouterr().err
