"""Training loop, configs, stability guard and bad input (deepscalelm.train)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from train_helpers import small_text, tiny_train_config  # tests/ is on sys.path

from deepscalelm import ModelConfig
from deepscalelm.errors import DSLMError
from deepscalelm.train.config import TrainConfig, parse_set, preset, read_config_file, resolve
from deepscalelm.train.guard import NonFiniteError
from deepscalelm.train.loop import train
from deepscalelm.train.optim import lr_at, param_groups

torch.set_num_threads(1)

TINY = ModelConfig(n_layers=2, d_model=16, n_heads=2, seq_len=16, vocab_size=256)
QUIET = dict(progress=False, log=lambda *_: None)


cfg = tiny_train_config


def losses(run: Path) -> list[float]:
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if "loss" in r and "val_loss" not in r]


def test_lr_schedule_warmup_then_cosine_and_linear():
    c = TrainConfig(lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(1, c) == pytest.approx(0.1) and lr_at(10, c) == pytest.approx(1.0)
    assert lr_at(60, c) == pytest.approx(0.55)
    assert lr_at(110, c) == pytest.approx(0.1) and lr_at(500, c) == pytest.approx(0.1)
    lin = c.replace(decay="linear")
    assert lr_at(60, lin) == pytest.approx(0.55) and lr_at(35, lin) == pytest.approx(0.775)


def test_weight_decay_groups_exclude_biases_and_norms():
    from deepscalelm.models import build_model

    m = build_model(TINY)
    decay, no_decay = param_groups(m, 0.1)
    names = {id(p): n for n, p in m.named_parameters()}
    dn = {names[id(p)] for p in decay["params"]}
    nn_ = {names[id(p)] for p in no_decay["params"]}
    assert "layers.0.attn.q.weight" in dn and "tok_emb.weight" in dn
    assert all(p.ndim < 2 for p in no_decay["params"]) and any("ln" in n for n in nn_)
    assert no_decay["weight_decay"] == 0.0


def test_configs_from_presets_files_and_overrides(tmp_path):
    m, t = preset("shakespeare-deep")
    assert m.arch == "decoder" and m.norm == "pre" and m.dropout == 0.1 and 24 <= m.n_layers <= 48
    (tmp_path / "c.toml").write_text('[model]\nn_layers = 6\n[train]\nlr = 0.01\n')
    (tmp_path / "c.json").write_text('{"model": {"norm": "post"}, "max_steps": 7}')
    m, t = resolve("tiny", str(tmp_path / "c.toml"), parse_set(["batch_size=2", "model.d_model=64"]))
    assert (m.n_layers, m.d_model, t.lr, t.batch_size) == (6, 64, 0.01, 2)
    m, t = resolve(None, str(tmp_path / "c.json"))
    assert m.norm == "post" and t.max_steps == 7
    with pytest.raises(ValueError, match="unknown config key"):
        resolve("tiny", None, {"nope": 1})
    with pytest.raises(ValueError, match="unknown preset"):
        resolve("huge", None)
    (tmp_path / "bad.toml").write_text("[model\n")
    with pytest.raises(DSLMError, match="cannot parse"):
        read_config_file(tmp_path / "bad.toml")
    yaml = pytest.importorskip("yaml")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"train": {"on_nan": "skip"}}))
    assert resolve("tiny", str(tmp_path / "c.yaml"))[1].on_nan == "skip"


def test_tiny_training_learns_and_is_seeded(tmp_path):
    t = cfg(tmp_path, max_steps=40, eval_interval=40, ckpt_interval=40, lr=3e-3)
    res = train(tmp_path / "a", TINY, t, **QUIET)
    la = losses(tmp_path / "a")
    assert len(la) == 40 and all(math.isfinite(x) for x in la)
    assert sum(la[-5:]) / 5 < sum(la[:5]) / 5 - 0.3
    # the user's own --data: the sample continues the start of its first line, not "ROMEO:"
    assert res.final["val_bpb"] < 8 and res.sample.startswith("First Citizen:")
    train(tmp_path / "b", TINY, t, **QUIET)
    assert losses(tmp_path / "b") == la


def test_grad_accumulation_matches_full_batch(tmp_path):
    t = cfg(tmp_path, max_steps=3, eval_interval=10, ckpt_interval=10)
    no_drop = TINY.replace(dropout=0.0, attn_dropout=0.0)
    train(tmp_path / "full", no_drop, t, **QUIET)
    train(tmp_path / "acc", no_drop, t.replace(micro_batch_size=1), **QUIET)
    assert losses(tmp_path / "acc") == pytest.approx(losses(tmp_path / "full"), rel=1e-5)


class _Poison:
    """Forward hook making the output of one layer infinite while `on` is set."""

    def __init__(self) -> None:
        self.on = False

    def __call__(self, _m, _inp, out):
        return out * float("inf") if self.on else out


def _poisoned_factory(poison: _Poison, layer: int = 1):
    from deepscalelm.models import build_model

    def make(config: ModelConfig):
        m = build_model(config)
        m.layers[layer].register_forward_hook(poison)
        return m
    return make


def test_nonfinite_loss_stops_and_names_first_bad_layer(tmp_path):
    poison = _Poison()

    def arm(step, _rec):
        poison.on = step >= 4

    with pytest.raises(NonFiniteError, match=r"step 5.*output of layers\.1.*step-0000003"):
        train(tmp_path / "run", TINY, cfg(tmp_path), factory=_poisoned_factory(poison), callbacks=[arm], **QUIET)
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts == ["step-0000003"]


def test_on_nan_skip_skips_the_step(tmp_path):
    poison = _Poison()

    def arm(step, _rec):
        poison.on = step == 2

    res = train(tmp_path / "run", TINY, cfg(tmp_path, on_nan="skip"), factory=_poisoned_factory(poison),
                callbacks=[arm], **QUIET)
    assert res.steps == 6
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if r.get("skipped")] == [3]


def test_bad_input_leaves_nothing_behind(tmp_path):
    out = tmp_path / "run"
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DSLMError, match="is empty"):
        train(out, TINY, cfg(tmp_path, data=str(empty)), **QUIET)
    short = tmp_path / "short.txt"
    short.write_text("just a few bytes of text\n" * 2)
    with pytest.raises(DSLMError, match="fewer than seq_len"):
        train(out, TINY.replace(seq_len=64), cfg(tmp_path, data=str(short)), **QUIET)
    binary = tmp_path / "bin.txt"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(DSLMError, match="binary"):
        train(out, TINY, cfg(tmp_path, data=str(binary)), **QUIET)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin.txt", "corpus.txt", "empty.txt", "short.txt"]


def test_output_dir_with_another_run_and_config_mismatch_on_resume(tmp_path):
    out = tmp_path / "run"
    t = cfg(tmp_path, max_steps=3)
    train(out, TINY, t, **QUIET)
    before = sorted(p.name for p in out.rglob("*"))
    with pytest.raises(DSLMError, match="already holds a run"):
        train(out, TINY, t, **QUIET)
    with pytest.raises(DSLMError, match="model config differs.*d_model"):
        train(out, TINY.replace(d_model=32), t, resume=True, **QUIET)
    with pytest.raises(DSLMError, match="training config differs.*lr"):
        train(out, TINY, t.replace(lr=0.5), resume=True, **QUIET)
    assert sorted(p.name for p in out.rglob("*")) == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(DSLMError, match="not empty"):
        train(other, TINY, t, **QUIET)
    with pytest.raises(DSLMError, match="holds no run"):
        train(tmp_path / "missing", TINY, t, resume=True, **QUIET)


def test_cli_train_smoke_and_errors(tmp_path, capsys):
    from deepscalelm.cli import main

    data = small_text(tmp_path)
    out = tmp_path / "cli"
    argv = ["train", "--preset", "tiny", "--data", data, "--max-steps", "4", "--out", str(out), "--no-progress",
            "--set", "eval_interval=2", "--set", "model.n_layers=2"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "val_bpb" in text and "sample:" in text
    assert main(argv) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--out", str(out), "--resume", "--max-steps", "6", "--no-progress"]) == 0
    assert losses(out)[-1] > 0 and len(losses(out)) == 6
    assert main(["train", "--data", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_activation_checkpointing_same_losses_and_bf16_autocast_runs(tmp_path):
    t = cfg(tmp_path, max_steps=3, eval_interval=10, ckpt_interval=10)
    no_drop = TINY.replace(dropout=0.0, attn_dropout=0.0)
    train(tmp_path / "plain", no_drop, t, **QUIET)
    train(tmp_path / "ckpt", no_drop, t.replace(activation_checkpointing=True), **QUIET)
    assert losses(tmp_path / "ckpt") == pytest.approx(losses(tmp_path / "plain"), rel=1e-6)
    res = train(tmp_path / "bf16", TINY, t.replace(precision="bf16"), **QUIET)
    assert all(math.isfinite(x) for x in losses(tmp_path / "bf16")) and math.isfinite(res.final["val_loss"])
    with pytest.raises(DSLMError, match="fp16 training needs a GPU"):
        train(tmp_path / "fp16", TINY, t.replace(precision="fp16"), **QUIET)
    assert not (tmp_path / "fp16").exists()


def test_default_sample_prompt():
    from deepscalelm.train.run import BUILTIN_PROMPT, default_sample_prompt

    assert default_sample_prompt(None, "anything") == BUILTIN_PROMPT == "ROMEO:"
    assert default_sample_prompt("tinyshakespeare", "") == "ROMEO:"
    assert default_sample_prompt("my.txt", "\n\n  Chapter 1\nIt was") == "Chapter 1"
    assert default_sample_prompt("my.txt", "the quick brown fox jumps over the dog") == "the quick brown fox"
    assert default_sample_prompt("my.txt", "x" * 50) == "x" * 20
    assert default_sample_prompt("my.txt", " \n ") == ""


def test_non_tty_progress_is_a_plain_line_every_log_interval(tmp_path, monkeypatch):
    import io
    import sys

    err = io.StringIO()  # not a terminal: no tqdm bar
    monkeypatch.setattr(sys, "stderr", err)
    lines: list[str] = []
    train(tmp_path / "r", TINY, cfg(tmp_path, log_interval=2), progress=True, log=lines.append)
    steps = [ln for ln in lines if ln.startswith("step ") and "loss" in ln and "ETA" in ln]
    assert [ln.split(":")[0] for ln in steps] == ["step 2/6", "step 4/6", "step 6/6"]
    assert "tokens/s" in steps[0] and "it/s" not in err.getvalue() and "train:" not in err.getvalue()


def test_vit_training_reports_images_per_second_and_accuracy(tmp_path):
    from train_helpers import tiny_fashion_mnist

    vit = ModelConfig(arch="vit", n_layers=2, d_model=16, n_heads=2, image_size=28, patch_size=7)
    t = cfg(tmp_path, data=tiny_fashion_mnist(tmp_path), max_steps=2, eval_interval=2, ckpt_interval=2)
    res = train(tmp_path / "v", vit, t, **QUIET)
    assert res.unit == "images" and set(res.final) == {"val_loss", "val_acc"}
    recs = [json.loads(x) for x in (tmp_path / "v" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "loss" in r and "val_loss" not in r]
    assert steps and all("images_per_s" in r and "tokens_per_s" not in r for r in steps)
    summary = json.loads((tmp_path / "v" / "summary.json").read_text())
    assert "images_per_s" in summary and "val_ppl" not in summary and 0 <= summary["val_acc"] <= 1
