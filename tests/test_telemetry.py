"""Telemetry: records every N steps inside a plain training loop, equal to check's statistics."""

from __future__ import annotations

import json

import pytest
import torch

from deepscalelm import ModelConfig, build_model
from deepscalelm.diagnostics import Telemetry, check

torch.set_num_threads(1)


def _setup():
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_layers=3, d_model=32, n_heads=4, seq_len=16, dropout=0.0, attn_dropout=0.0))
    ids = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(2))
    return model, ids


def test_records_every_n_steps_and_matches_check(tmp_path):
    model, ids = _setup()
    ref = check(model, ids)  # same weights and batch, loss protocol
    path = tmp_path / "tel.jsonl"
    tel = Telemetry(model, every=2, path=path, max_sequences=None)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: weights stay, so every record equals ref
    for step in range(5):
        with tel.step(step):
            loss = model.loss(ids)
            loss.backward()
        opt.step()
        opt.zero_grad()
    tel.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 2, 4]
    rec = lines[0]
    assert [r["name"] for r in rec["rows"]] == [r["name"] for r in ref.rows]
    for got, want in zip(rec["rows"], ref.rows, strict=True):
        for k in ("var", "corr", "grad_var", "grad_corr"):
            assert got[k] == pytest.approx(want[k], rel=1e-6), (got["name"], k)
        if want["logit_var"] is not None:
            assert got["logit_var"] == pytest.approx(want["logit_var"], rel=1e-6)
    ref_w = {w["name"]: w["grad_norm"] for w in ref.weights}
    for name, gn in rec["weights"].items():
        assert gn == pytest.approx(ref_w[name], rel=1e-5)
    # no hooks remain after the loop
    assert all(not m._forward_hooks for m in model.modules())


def test_begin_end_api_and_bad_every():
    model, ids = _setup()
    tel = Telemetry(model, every=3, path=None)
    assert tel.begin(1) is False and tel.end(1) is None
    assert tel.begin(3) is True
    model.loss(ids).backward()
    rec = tel.end(3, loss=1.0)
    assert rec["step"] == 3 and rec["verdicts"] == [] and tel.last is rec
    with pytest.raises(ValueError, match="every"):
        Telemetry(model, every=0)


def test_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    model, ids = _setup()
    tel = Telemetry(model, every=1, path=None, tensorboard_dir=tmp_path / "tb")
    with tel.step(0):
        model.loss(ids).backward()
    tel.close()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
