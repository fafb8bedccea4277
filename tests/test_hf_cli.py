"""``dslm apply --hf`` and ``dslm predict --hf`` on tiny saved Hugging Face models (tmp_path)."""

from __future__ import annotations

import json

import pytest
import torch

from deepscalelm.cli import main

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()


@pytest.fixture
def gpt2_dir(tmp_path):
    cfg = transformers.GPT2Config(n_layer=4, n_embd=32, n_head=4, vocab_size=256, n_positions=64,
                                  bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg)
    folder = tmp_path / "gpt2"
    model.save_pretrained(folder)
    (folder / "vocab.json").write_text("{}")
    return folder


def test_apply_writes_a_stock_checkpoint(gpt2_dir, tmp_path, capsys):
    out = tmp_path / "applied"
    assert main(["apply", "--hf", str(gpt2_dir), "--out", str(out), "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert "GPT2LMHeadModel, scheme=dslm" in text and "wrote" in text and "vocab.json" in text
    model = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    assert json.loads((out / "config.json").read_text())["deepscalelm_scheme"]["scheme"] == "dslm"
    ids = torch.randint(0, 256, (2, 16))
    assert abs(model(ids).logits.var().item() - 1.0) < 0.3  # DSLM: unit-variance logits
    # the same seed gives the same checkpoint
    again = tmp_path / "again"
    assert main(["apply", "--hf", str(out), "--out", str(again), "--seed", "1"]) == 0
    other = transformers.GPT2LMHeadModel.from_pretrained(again).eval()
    assert torch.equal(other(ids).logits, model(ids).logits)


def test_apply_refuses_bad_input_and_writes_nothing(gpt2_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    assert main(["apply", "--hf", str(empty), "--out", str(out)]) == 2
    assert "has no config.json" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((gpt2_dir / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    assert main(["apply", "--hf", str(broken), "--out", str(out)]) == 2
    assert "cannot read the model" in capsys.readouterr().err
    assert not out.exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    assert main(["apply", "--hf", str(gpt2_dir), "--out", str(busy)]) == 2
    assert "is not empty; pass --force" in capsys.readouterr().err
    assert sorted(p.name for p in busy.iterdir()) == ["keep.txt"]
    assert main(["apply", "--hf", str(gpt2_dir), "--out", str(busy), "--force"]) == 0
    assert (busy / "config.json").is_file()
    assert main(["apply", "--hf", str(gpt2_dir), "--out", str(out), "--scheme", "deepnet"]) == 2
    assert "Post-LN only" in capsys.readouterr().err
    assert main(["apply", "--hf", str(gpt2_dir), "--out", str(out), "--scheme", "xavier", "--k", "2"]) == 2
    assert "do not apply to scheme 'xavier'" in capsys.readouterr().err
    assert not out.exists()


def test_predict_hf_before_and_after_apply(gpt2_dir, tmp_path, capsys):
    assert main(["predict", "--hf", str(gpt2_dir), "--json", str(tmp_path / "before.json")]) == 0
    before = json.loads((tmp_path / "before.json").read_text())
    assert before["meta"]["config"]["scheme"] == "gpt2" and before["meta"]["config"]["n_layers"] == 4
    out = tmp_path / "applied"
    assert main(["apply", "--hf", str(gpt2_dir), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["predict", "--hf", str(out)]) == 0
    text = capsys.readouterr().out
    assert "scheme=dslm, 4 layers, d_model=32" in text and "divided by lam" in text
    assert main(["predict", "--hf", str(gpt2_dir), "--scheme", "dslm", "--seq-len", "32"]) == 0
    assert "scheme=dslm, 4 layers, d_model=32, heads=4, d_ff=128, L=32" in capsys.readouterr().out
    assert main(["predict", "--hf", str(tmp_path)]) == 2
    assert "has no config.json" in capsys.readouterr().err


def test_apply_and_predict_a_bert_folder(tmp_path, capsys):
    cfg = transformers.BertConfig(num_hidden_layers=3, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                                  vocab_size=256, max_position_embeddings=64)
    src, out = tmp_path / "bert", tmp_path / "bert-dslm"
    transformers.BertForMaskedLM(cfg).save_pretrained(src)
    assert main(["apply", "--hf", str(src), "--out", str(out), "--k", "1"]) == 0
    assert "BertForMaskedLM, scheme=dslm, seed=0, options {'k': 1.0}" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["deepscalelm_scheme"]["options"] == {"k": 1.0}
    assert main(["predict", "--hf", str(out)]) == 0
    text = capsys.readouterr().out
    assert "encoder, post-LN, scheme=dslm, 3 layers, d_model=32" in text and "divided by lam" not in text
