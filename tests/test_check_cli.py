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


def test_check_names_preset_and_agreement(capsys):
    assert main(["check", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "preset=dslm" in out and "measured and predicted agree within" in out


def test_check_encoder_decoder_and_vit(tmp_path, capsys):
    ed = ["--arch", "encoder-decoder", "--n-layers", "2", "--d-model", "32", "--n-heads", "4", "--seq-len", "16",
          "--batch-size", "2", "--json", str(tmp_path / "ed.json"), "--plot", str(tmp_path / "ed.png")]
    assert main(["check", *ed]) == 0
    out = capsys.readouterr().out
    assert "encoder-decoder" in out and "[2, 16] + [2, 16]" in out
    stacks = {r["stack"] for r in json.loads((tmp_path / "ed.json").read_text())["rows"]}
    assert stacks == {"encoder", "decoder"} and (tmp_path / "ed.png").stat().st_size > 10_000
    vit = ["--arch", "vit", "--n-layers", "2", "--d-model", "32", "--n-heads", "4", "--batch-size", "3",
           "--json", str(tmp_path / "vit.json")]
    assert main(["check", *vit]) == 0
    out = capsys.readouterr().out
    assert "Gaussian images with random labels" in out and "[3, 1, 28, 28]" in out
    data = json.loads((tmp_path / "vit.json").read_text())
    assert data["meta"]["predicted"] and data["rows"][0]["pred_grad_var"] is not None
    assert main(["check", *vit, "--data", str(tmp_path / "no-such-dir")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_check_every_default_shows_about_15_layers(capsys):
    assert main(["check", "--n-layers", "48", "--d-model", "16", "--n-heads", "2", "--seq-len", "8",
                 "--batch-size", "2", "--data", "random"]) == 0
    out = capsys.readouterr().out
    table = [ln for ln in out.splitlines() if ln.startswith("-  ")]
    layers = {int(ln.split()[1]) for ln in table}
    assert 12 <= len(layers) <= 16, sorted(layers)


def test_check_plot_bad_suffix_exits_2(tmp_path, capsys):
    assert main(["check", *SMALL, "--plot", str(tmp_path / "r.jpq")]) == 2
    assert "suffixes" in capsys.readouterr().err


def test_check_vit_on_a_fashion_mnist_directory(tmp_path, capsys):
    from train_helpers import tiny_fashion_mnist

    vit = ["--arch", "vit", "--n-layers", "2", "--d-model", "32", "--n-heads", "4", "--batch-size", "3"]
    assert main(["check", *vit, "--data", tiny_fashion_mnist(tmp_path)]) == 0
    assert "3 Fashion-MNIST images from" in capsys.readouterr().out
