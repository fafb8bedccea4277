"""Fine-tuning: encoding, unit-variance head, learning on toy tasks, checkpoints, clear errors."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from deepscalelm import ModelConfig
from deepscalelm.cli import main as cli_main
from deepscalelm.errors import DSLMError
from deepscalelm.finetune import (
    FinetuneConfig,
    FinetuneModel,
    encode_parts,
    evaluate_checkpoint,
    finetune,
    load_backbone,
    load_finetuned,
)
from deepscalelm.finetune.api import _lr_at
from deepscalelm.finetune.encode import BOS, EOS, PAD, SEP, encode_split
from deepscalelm.models import build_model
from deepscalelm.tasks import Example, TaskData
from deepscalelm.train import TrainConfig
from deepscalelm.train import checkpoint as ck

torch.set_num_threads(1)


def make_ckpt(root: Path, arch: str = "encoder", n_layers: int = 2, seq_len: int = 32, **kw) -> Path:
    """A 'pretrained' checkpoint written with the training checkpoint API (random DSLM weights)."""
    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, n_layers=n_layers, d_model=32, n_heads=2, seq_len=seq_len, vocab_size=257,
                      dropout=0.0, attn_dropout=0.0, **kw)
    model = build_model(cfg)
    meta = {"model_config": cfg.to_dict(), "train_config": TrainConfig().to_dict(), "objective": "mlm",
            "world_size": 1}
    return ck.save_checkpoint(root, 1, model_state=model.state_dict(), optim_state={"state": {}, "param_groups": []},
                              rng_states={}, meta=meta)


def toy_classification(n: int = 96, seed: int = 0) -> TaskData:
    """Label 1 iff the text is made of 'a's (else 'b's): learnable in a few dozen steps."""
    rng = random.Random(seed)

    def ex(i: int) -> Example:
        y = rng.randrange(2)
        return Example(("a" if y else "b") * rng.randint(4, 12), y, where=f"toy:{i}")

    splits = {s: [ex(i) for i in range(n)] for s in ("train", "dev", "test")}
    return TaskData("toy", "classification", 2, splits, ["b", "a"])


def toy_choice(n: int = 64, seed: int = 0) -> TaskData:
    """Three options, the correct one is always 'yes' (others 'no'), at a random position."""
    rng = random.Random(seed)
    out = {}
    for s in ("train", "dev", "test"):
        exs = []
        for i in range(n):
            y = rng.randrange(3)
            opts = tuple("yes" if j == y else "no" for j in range(3))
            exs.append(Example("context text", y, "which?", opts, f"toy:{i}"))
        out[s] = exs
    return TaskData("toychoice", "multiple_choice", 3, out)


def test_encode_parts_layout_and_truncation() -> None:
    assert encode_parts(["hi"], None, 16) == [BOS, *b"hi", EOS]
    ids = encode_parts(["q?"], "abcdefghijklmnop", 12, "head")
    assert ids == [BOS, *b"q?", SEP, *b"abcdefg", EOS] and len(ids) == 12
    assert encode_parts(["q?"], "abcdefghijklmnop", 12, "tail") == [BOS, *b"q?", SEP, *b"jklmnop", EOS]
    long_q = encode_parts(["x" * 40, "opt"], "ctx", 10)
    assert len(long_q) == 10 and long_q[-1] == EOS and SEP not in long_q
    with pytest.raises(ValueError, match="max_len"):
        encode_parts(["a"], None, 4)
    arr = encode_split(toy_choice(4).splits["train"], toy_choice(4), 24, pad_to_max=True)
    assert arr["ids"].shape == (4, 3, 24) and (arr["ids"][0, 0, arr["lengths"][0, 0]:] == PAD).all()


def test_lr_schedule() -> None:
    assert _lr_at(1, 10, 2, 1.0) == 0.5 and _lr_at(2, 10, 2, 1.0) == 1.0
    assert _lr_at(6, 10, 2, 1.0) == pytest.approx(0.5) and _lr_at(10, 10, 2, 1.0) == 0.0


def test_head_output_has_unit_variance(tmp_path: Path) -> None:
    ckpt = make_ckpt(tmp_path / "pre")
    backbone = load_backbone(ckpt)[0]
    with torch.no_grad():  # a pretrained final LayerNorm has gain != 1: the head must compensate
        backbone.ln_f.weight.mul_(3.0)
    model = FinetuneModel(backbone, 256, "classification")
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 256, (64, 1, 32), generator=g)
    lengths = torch.full((64, 1), 32)
    torch.manual_seed(2)
    q = model.init_head(ids, lengths)
    assert q == pytest.approx(9.0, rel=0.05)
    model.eval()
    with torch.no_grad():
        z = model(ids, lengths)
    assert z.pow(2).mean().item() == pytest.approx(1.0, abs=0.2)


@pytest.mark.parametrize("arch", ["encoder", "decoder"])
def test_finetune_learns_toy_task_and_saves_checkpoints(tmp_path: Path, arch: str) -> None:
    ckpt = make_ckpt(tmp_path / "pre", arch=arch)
    cfg = FinetuneConfig(lrs=(3e-3, 1e-4), seeds=(0, 1), epochs=4, batch_size=16, max_len=16, save="best")
    res = finetune(ckpt, toy_classification(), tmp_path / "ft", cfg, log=lambda _m: None)
    assert res["best_lr"] == 3e-3 and res["test_mean"] > 0.9 and len(res["runs"]) == 4
    kept = [r for r in res["runs"] if "checkpoint" in r]
    assert {r["lr"] for r in kept} == {3e-3}
    # a saved run reloads to the same accuracy, through the API and the CLI
    path = tmp_path / "ft" / kept[0]["checkpoint"]
    ev = evaluate_checkpoint(path, toy_classification(), "test")
    assert ev["accuracy"] == pytest.approx(kept[0]["test_acc"])
    model, meta, _ = load_finetuned(path)
    assert meta["task"] == "toy" and meta["pooling"] == ("last" if arch == "decoder" else "first")
    # DSLM residual scaling is in force in the fine-tuned backbone
    lam_beta = [(b.lam, b.beta) for b in (model.backbone.layers[0].attn, model.backbone.layers[1].ffn)]
    scheme = model.backbone.scheme
    assert lam_beta == [tuple(scheme.merges["layers.0.attn"]), tuple(scheme.merges["layers.1.ffn"])]
    assert lam_beta[0][0] < 1.0


def test_finetune_is_deterministic_and_multiple_choice_learns(tmp_path: Path) -> None:
    ckpt = make_ckpt(tmp_path / "pre")
    cfg = FinetuneConfig(lrs=(3e-3,), seeds=(5,), epochs=4, batch_size=8, max_len=32, save="none")
    a = finetune(ckpt, toy_choice(), None, cfg, log=lambda _m: None)
    b = finetune(ckpt, toy_choice(), None, cfg, log=lambda _m: None)
    assert a["runs"][0]["final_loss"] == b["runs"][0]["final_loss"]
    assert a["test_mean"] > 0.9 and a["majority_test_acc"] < 0.6


def test_bad_inputs_give_clear_errors_and_write_nothing(tmp_path: Path) -> None:
    cfg = FinetuneConfig(lrs=(1e-3,), seeds=(0,), epochs=1, max_len=16, save="all")
    out = tmp_path / "ft"
    vit = make_ckpt(tmp_path / "vit", arch="vit", image_size=8, patch_size=4)
    with pytest.raises(DSLMError, match="'vit' model; the fine-tuning heads"):
        finetune(vit, toy_classification(), out, cfg)
    ed = make_ckpt(tmp_path / "ed", arch="encoder-decoder")
    with pytest.raises(DSLMError, match="'encoder-decoder' model"):
        finetune(ed, toy_classification(), out, cfg)
    enc = make_ckpt(tmp_path / "enc", seq_len=16)
    # diverging training (absurd lr) fails mid-run: the staging directory is removed, out never appears
    with pytest.raises(DSLMError, match="non-finite loss"):
        finetune(enc, toy_classification(), out, FinetuneConfig(lrs=(1e30,), seeds=(0,), epochs=2, max_len=16),
                 log=lambda _m: None)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["ed", "enc", "vit"]
    # a fine-tuned head that does not fit the task
    res = finetune(enc, toy_classification(), out, cfg, log=lambda _m: None)
    ft = out / res["runs"][0]["checkpoint"]
    with pytest.raises(DSLMError, match="classification over 2 classes, but task 'toychoice' is multiple_choice"):
        evaluate_checkpoint(ft, toy_choice())
    six = TaskData("six", "classification", 6, {"test": [Example("x", 5)]})
    with pytest.raises(DSLMError, match="over 2 classes, but task 'six' is classification with 6 labels"):
        evaluate_checkpoint(ft, six)
    with pytest.raises(DSLMError, match="already fine-tuned"):
        finetune(ft, toy_classification(), tmp_path / "again", cfg)
    with pytest.raises(DSLMError, match="not empty"):
        finetune(enc, toy_classification(), out, cfg)
    with pytest.raises(DSLMError, match="not a fine-tuned checkpoint"):
        load_finetuned(enc)
    with pytest.raises(ValueError, match="lrs"):
        FinetuneConfig(lrs=())
    # the CLI turns these into a message and exit status 2
    assert cli_main(["finetune", str(vit), "--task", "sst2", "--out", str(tmp_path / "cli")]) == 2
    assert not (tmp_path / "cli").exists()



def test_one_seed_summary_has_no_spread(tmp_path: Path) -> None:
    """A single seed prints its accuracy without '± 0.0000 over 1 seeds'."""
    ckpt = make_ckpt(tmp_path / "pre")
    lines: list[str] = []
    finetune(ckpt, toy_choice(), None, FinetuneConfig(lrs=(3e-3,), seeds=(5,), epochs=1, batch_size=8, max_len=32,
                                                     save="none"), log=lines.append)
    summary = lines[-1]
    assert "(1 seed)" in summary and "±" not in summary and "over 1 seeds" not in summary
