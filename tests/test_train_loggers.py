"""Metric sinks (CSV, Weights & Biases offline), library logging and `--tokenizer FILE` (HF tokenizer.json)."""

from __future__ import annotations

import csv
import json
import logging
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import small_text, tiny_train_config

from deepscalelm import ModelConfig
from deepscalelm.errors import DSLMError
from deepscalelm.train.config import TrainConfig
from deepscalelm.train.loop import train
from deepscalelm.train.metrics import read_records

TINY = ModelConfig(n_layers=2, d_model=16, n_heads=2, seq_len=16, vocab_size=256)
QUIET = dict(progress=False, log=lambda *_: None)


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_metrics_csv_has_one_row_per_step_matching_the_jsonl(tmp_path):
    torch.set_num_threads(1)
    train(tmp_path / "run", TINY, tiny_train_config(tmp_path, sample_tokens=0), **QUIET)
    recs = read_records(tmp_path / "run" / "metrics.jsonl")
    rows = _csv_rows(tmp_path / "run" / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    train_recs = {r["step"]: r for r in recs if "loss" in r}
    eval_recs = {r["step"]: r for r in recs if "val_loss" in r}
    assert sorted(eval_recs) == [3, 6]
    for row in rows:
        step = int(row["step"])
        assert float(row["loss"]) == train_recs[step]["loss"]
        assert (row["val_loss"] == "") == (step not in eval_recs)
        if step in eval_recs:
            assert float(row["val_loss"]) == eval_recs[step]["val_loss"]


def test_wandb_logger_offline_records_the_run(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    torch.set_num_threads(1)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    logged: list[tuple[int, dict]] = []
    real_init = wandb.init

    def init(**kw):  # the real offline run, with its log calls recorded
        run = real_init(**kw)
        real_log = run.log
        monkeypatch.setattr(run, "log", lambda data, step=None: (logged.append((step, dict(data))),
                                                                  real_log(data, step=step)))
        return run

    monkeypatch.setattr(wandb, "init", init)
    out = tmp_path / "run"
    cfg = tiny_train_config(tmp_path, max_steps=3, sample_tokens=0, wandb=True, wandb_project="dslm-test")
    train(out, TINY, cfg, **QUIET)
    want = [(r["step"], {k: v for k, v in r.items() if k != "step"}) for r in read_records(out / "metrics.jsonl")]
    assert logged == want and any("val_loss" in d for _, d in logged)
    run_id = (out / "wandb_id.txt").read_text().strip()
    files = list((out / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 1 and files[0].stat().st_size > 0


def test_wandb_missing_is_one_clear_error_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(DSLMError, match="pip install wandb"):
        train(tmp_path / "run", TINY, tiny_train_config(tmp_path, wandb=True), **QUIET)
    assert not (tmp_path / "run").exists()


def test_messages_go_through_logging(tmp_path, caplog):
    torch.set_num_threads(1)
    with caplog.at_level(logging.INFO, logger="deepscalelm"):
        train(tmp_path / "run", TINY, tiny_train_config(tmp_path, max_steps=1, sample_tokens=0), progress=False)
    by_logger = {(r.name, r.getMessage().split(":")[0]) for r in caplog.records}
    assert ("deepscalelm.train.run", "data") in by_logger
    assert ("deepscalelm.train.loop", "model") in by_logger


def test_cli_prints_library_messages(tmp_path, capsys):
    from deepscalelm.cli import main

    rc = main(["train", "--preset", "tiny", "--data", small_text(tmp_path), "--max-steps", "1", "--out",
               str(tmp_path / "run"), "--no-progress", "--set", "sample_tokens=0", "--set", "threads=1",
               "--n-layers", "2", "--d-model", "16", "--seq-len", "16"])
    assert rc == 0
    assert "model: decoder, 2 layers" in capsys.readouterr().out


# ------------------------------------------------------------------------------- --tokenizer FILE
def _llama_style(tmp_path: Path, text: str) -> Path:
    """A tiny Llama-style tokenizer.json: BPE with byte fallback, Metaspace, <s> added by post-processing."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False,
                                  initial_alphabet=[f"<0x{i:02X}>" for i in range(256)])
    tok.train_from_iterator(text.splitlines(), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    path = tmp_path / "llama" / "tokenizer.json"
    path.parent.mkdir()
    tok.save(str(path))
    return path


def test_train_with_an_existing_llama_style_tokenizer(tmp_path):
    from tokenizers import Tokenizer

    from deepscalelm.data.stream import open_stream
    from deepscalelm.data.tokenizer import HFTokenizer, load_tokenizer

    torch.set_num_threads(1)
    data = small_text(tmp_path)
    path = _llama_style(tmp_path, Path(data).read_text())
    hf = Tokenizer.from_file(str(path))
    res = train(tmp_path / "run", TINY, tiny_train_config(tmp_path, tokenizer=str(path), max_steps=2), **QUIET)
    run = tmp_path / "run"
    assert json.loads((run / "run.json").read_text())["model"]["vocab_size"] == hf.get_vocab_size()
    tok = load_tokenizer(str(run / "tokenizer.json"))
    assert isinstance(tok, HFTokenizer) and tok.kind == "hf" and tok.vocab_size == hf.get_vocab_size()
    stream = open_stream(run / "data", "train")
    head = Path(data).read_text()[:200]
    # the whole text encoded without post-processing: no <s> per chunk or line
    assert hf.token_to_id("<s>") not in set(stream.tokens.tolist())
    assert stream.tokens[:20].tolist() == hf.encode(head, add_special_tokens=False).ids[:20]
    assert tok.decode(tok.encode("ROMEO: hi")) == "ROMEO: hi"
    prompt = json.loads((run / "run.json").read_text())["train"]["sample_prompt"]  # from the user's --data
    assert res.sample is not None and prompt and res.sample.startswith(prompt)


def test_gpt2_style_tokenizer_round_trips_and_bad_files_are_clear_errors(tmp_path):
    from tokenizers import ByteLevelBPETokenizer

    from deepscalelm.data.tokenizer import build_tokenizer, tokenizer_from_dict

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["First Citizen:\nBefore we proceed any further, hear me speak."] * 20, vocab_size=280,
                            special_tokens=["<|endoftext|>"], show_progress=False)
    bpe.save(str(tmp_path / "gpt2.json"))
    tok = build_tokenizer(str(tmp_path / "gpt2.json"))
    text = "Before we proceed,\n  hear me speak.\n"
    assert tok.decode(tok.encode(text)) == text
    assert tok.vocab_size == bpe.get_vocab_size()
    again = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
    assert again.encode(text) == tok.encode(text)

    with pytest.raises(DSLMError, match="does not exist"):
        build_tokenizer(str(tmp_path / "missing.json"))
    (tmp_path / "junk.json").write_text("{\"not\": \"a tokenizer\"}")
    with pytest.raises(DSLMError, match="not a Hugging Face tokenizer.json"):
        build_tokenizer(str(tmp_path / "junk.json"))
    with pytest.raises(ValueError, match="tokenizer must be one of"):
        TrainConfig(tokenizer="gpt2")
