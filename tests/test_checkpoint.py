"""Checkpoints: safetensors + JSON only, atomic, verified on load (deepscalelm.train.checkpoint)."""

from __future__ import annotations

import json

import pytest
import torch
from train_helpers import tiny_train_config  # tests/ is on sys.path

from deepscalelm import ModelConfig
from deepscalelm.errors import DSLMError
from deepscalelm.train import checkpoint as ck
from deepscalelm.train.loop import train

torch.set_num_threads(1)

TINY = ModelConfig(n_layers=2, d_model=16, n_heads=2, seq_len=16, vocab_size=256)


tiny_train = tiny_train_config


def test_checkpoint_files_are_safetensors_and_json_only(tmp_path):
    res = train(tmp_path / "run", TINY, tiny_train(tmp_path), progress=False, log=lambda *_: None)
    ckpt = res.checkpoint
    assert ckpt.name == "step-0000006"
    names = sorted(p.name for p in ckpt.iterdir())
    assert names == ["meta.json", "model.safetensors", "run.json", "state.json", "tokenizer.json",
                     "train_state.safetensors"]
    state = ck.read_state(ckpt)
    assert state["step"] == 6 and state["data_position"]["next_step"] == 7
    # kept the two newest checkpoints only, no temporary leftovers
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()].__len__() == 2
    msd = ck.load_model_state(ckpt)
    osd, rng = ck.load_train_state(ckpt, state)
    assert "tok_emb.weight" in msd and "cpu.rank0" in rng
    assert set(osd["state"]) <= set(msd)


def test_corrupt_truncated_and_foreign_checkpoints_are_rejected(tmp_path):
    res = train(tmp_path / "run", TINY, tiny_train(tmp_path), progress=False, log=lambda *_: None)
    ckpt = res.checkpoint
    model_file = ckpt / "model.safetensors"
    raw = bytearray(model_file.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    model_file.write_bytes(bytes(raw))
    with pytest.raises(DSLMError, match="corrupt or truncated"):
        ck.read_state(ckpt)
    model_file.write_bytes(bytes(raw[: len(raw) // 3]))
    with pytest.raises(DSLMError, match="corrupt or truncated"):
        ck.read_state(ckpt)
    with pytest.raises(DSLMError, match="cannot read"):
        ck.load_model_state(ckpt)
    (ckpt / "state.json").write_text("{not json")
    with pytest.raises(DSLMError, match="state.json is corrupt"):
        ck.read_state(ckpt)
    # an intact checkpoint loaded into a model of another config
    other = sorted((tmp_path / "run" / "checkpoints").iterdir())[0]
    from deepscalelm.models import build_model

    bigger = build_model(TINY.replace(d_model=32, same_token_prob=0.05))
    with pytest.raises(DSLMError, match="different config"):
        ck.load_model_state(other, bigger.state_dict())


def test_sample_and_eval_commands_work_from_a_checkpoint(tmp_path, capsys):
    from deepscalelm.cli import main

    train(tmp_path / "run", TINY, tiny_train(tmp_path), progress=False, log=lambda *_: None)
    assert main(["sample", str(tmp_path / "run"), "--prompt", "ROMEO:", "--length", "20", "--seed", "1"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("ROMEO:")
    assert main(["sample", str(tmp_path / "run"), "--prompt", "ROMEO:", "--length", "20", "--seed", "1"]) == 0
    assert capsys.readouterr().out == first  # seeded
    assert main(["eval", str(tmp_path / "run"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["step"] == 6 and res["val_loss"] > 0
    assert abs(res["val_bpb"] - res["val_loss"] / 0.6931471805599453) < 1e-9
    f = tmp_path / "other.txt"
    f.write_text("To be, or not to be, that is the question.\n" * 20)
    assert main(["eval", str(tmp_path / "run"), "--file", str(f)]) == 0
    out = capsys.readouterr().out
    assert "file_loss" in out and "file_bpb" in out and "val_loss" not in out and "on --file" in out
    assert main(["eval", str(tmp_path / "run"), "--split", "train", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["data"] == "train" and "train_loss" in res and "val_loss" not in res
    # no --prompt: the run's own prompt, here the start of its training text's first line
    assert main(["sample", str(tmp_path / "run"), "--length", "5", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("First Citizen:")
    assert main(["eval", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_leftovers_of_a_killed_checkpoint_write_are_ignored_and_cleaned(tmp_path):
    out = tmp_path / "run"
    t = tiny_train(tmp_path, max_steps=3)
    train(out, TINY, t, progress=False, log=lambda *_: None)
    root = out / "checkpoints"
    partial = root / ".tmp-step-0000006-999999-1"  # a writer killed before its rename
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\x00" * 10)
    assert ck.latest_checkpoint(out).name == "step-0000003"
    res = train(out, TINY, t.replace(max_steps=6), resume=True, progress=False, log=lambda *_: None)
    assert res.steps == 6 and not partial.exists()
    assert sorted(p.name for p in root.iterdir()) == ["step-0000003", "step-0000006"]


def test_sample_on_an_encoder_run_says_an_encoder(tmp_path, capsys):
    from deepscalelm.cli import main
    from deepscalelm.errors import with_article

    assert [with_article(w) for w in ("encoder", "decoder", "encoder-decoder", "vit")] == [
        "an encoder", "a decoder", "an encoder-decoder", "a vit"]
    enc = TINY.replace(arch="encoder")
    train(tmp_path / "enc", enc, tiny_train(tmp_path, max_steps=1, eval_interval=1, ckpt_interval=1),
          progress=False, log=lambda *_: None)
    assert main(["sample", str(tmp_path / "enc"), "--prompt", "a"]) == 2
    assert "is an encoder model" in capsys.readouterr().err
