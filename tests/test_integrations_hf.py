"""`deepscalelm.integrations.hf.TelemetryCallback` in a 4-step `transformers.Trainer` run on a tiny
random GPT-2 with random token ids (CPU, no downloads)."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
transformers.logging.set_verbosity_error()

from deepscalelm.integrations.hf import TelemetryCallback  # noqa: E402


class RandomIds(torch.utils.data.Dataset):
    def __init__(self, n: int = 16, length: int = 16) -> None:
        self.ids = torch.randint(0, 64, (n, length), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class Seen(transformers.TrainerCallback):
    """Keeps every ``logs`` dict the Trainer hands its callbacks."""

    def __init__(self) -> None:
        self.logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


def _trainer(tmp_path, callbacks=(), accumulation: int = 1):
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=4, vocab_size=64, n_positions=32, bos_token_id=0, eos_token_id=0))
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=2, learning_rate=1e-3,
        logging_steps=100, save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
        gradient_accumulation_steps=accumulation, dataloader_num_workers=0)
    return transformers.Trainer(model=model, args=args, train_dataset=RandomIds(), callbacks=list(callbacks))


def test_attached_callback_logs_through_the_trainer(tmp_path):
    seen = Seen()
    trainer = _trainer(tmp_path, [seen])
    cb = TelemetryCallback.attach(trainer, every=2, path=tmp_path / "tel.jsonl")
    trainer.train()
    lines = [json.loads(x) for x in (tmp_path / "tel.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4]
    assert [r["name"] for r in lines[0]["rows"]] == ["transformer.h.0", "transformer.h.1", "transformer.ln_f"]
    assert all(r["var"] > 0 and r["grad_var"] > 0 for r in lines[0]["rows"])
    assert len(lines[0]["weights"]) == len(list(trainer.model.parameters()))  # every parameter (wte once)
    logged = [h for h in trainer.state.log_history if "dslm/var/transformer.h.0" in h]
    assert [h["step"] for h in logged] == [2, 4]
    assert logged[0]["dslm/var/transformer.h.0"] == pytest.approx(lines[0]["rows"][0]["var"])
    assert logged[0]["dslm/verdicts"] == len(lines[0]["verdicts"]) and logged[0]["dslm/var_spread"] >= 1
    assert sum("dslm/var_spread" in x for x in seen.logs) == 2  # the other callbacks saw it too
    assert [r["step"] for r in cb.records] == [2, 4]


def test_callback_in_the_list_adds_scalars_to_on_log(tmp_path):
    cb = TelemetryCallback(every=4, path=None, per_layer=False)
    seen = Seen()
    trainer = _trainer(tmp_path, [cb, seen], accumulation=2)
    trainer.train()
    with_dslm = [x for x in seen.logs if "dslm/var_spread" in x]
    assert len(with_dslm) == 1 and not any("dslm/var/transformer.h.0" in x for x in seen.logs)
    assert "loss" in with_dslm[0]  # logged together with the Trainer's own scalars at step 4
    assert not list((tmp_path).glob("*.jsonl"))


def test_bad_every_is_refused():
    with pytest.raises(ValueError, match="every must be an integer >= 1"):
        TelemetryCallback(every=0)
