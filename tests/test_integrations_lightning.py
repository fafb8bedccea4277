"""`deepscalelm.integrations.lightning.TelemetryCallback`: a 4-step Lightning run of a minimal
LightningModule around a tiny deepscalelm decoder (CPU, random ids)."""

from __future__ import annotations

import json

import pytest
import torch

pl = pytest.importorskip("lightning.pytorch")

from deepscalelm import ModelConfig  # noqa: E402
from deepscalelm.integrations.lightning import TelemetryCallback  # noqa: E402
from deepscalelm.models import build_model  # noqa: E402


class TinyLM(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.model = build_model(ModelConfig(arch="decoder", n_layers=3, d_model=32, n_heads=4, vocab_size=64,
                                             seq_len=16, scheme="dslm"))

    def training_step(self, batch, batch_idx):
        return self.model.loss(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-2)


class Metrics(pl.loggers.Logger):
    """A logger that keeps what it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[tuple[int, dict]] = []

    @property
    def name(self):
        return "memory"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, dict(metrics)))


def _fit(tmp_path, cb, accumulate: int = 1) -> Metrics:
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randint(0, 64, (32, 16)))
    logger = Metrics()
    trainer = pl.Trainer(max_steps=4, accelerator="cpu", logger=logger, callbacks=[cb], enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accumulate_grad_batches=accumulate,
                         default_root_dir=str(tmp_path))
    trainer.fit(TinyLM(), torch.utils.data.DataLoader(data, batch_size=2))
    return logger


def test_lightning_callback_records_every_n_steps(tmp_path):
    cb = TelemetryCallback(every=2, path=tmp_path / "tel.jsonl", target="model")
    logger = _fit(tmp_path, cb)
    lines = [json.loads(x) for x in (tmp_path / "tel.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4]
    names = [r["name"] for r in lines[0]["rows"]]
    assert len(names) >= 4 and names[-1] == "ln_f"  # the embedding, every layer's sublayers, the final norm
    assert all(r["var"] > 0 and r["grad_var"] > 0 for r in lines[0]["rows"])
    ours = [(s, m) for s, m in logger.metrics if "dslm/var_spread" in m]
    assert [s for s, _ in ours] == [2, 4]
    assert ours[0][1]["dslm/verdicts"] == len(lines[0]["verdicts"])
    assert [r["step"] for r in cb.records] == [2, 4]


def test_lightning_callback_with_accumulation_and_bad_target(tmp_path):
    cb = TelemetryCallback(every=4, path=None, target="model", per_layer=False)
    logger = _fit(tmp_path, cb, accumulate=2)
    assert [s for s, m in logger.metrics if "dslm/var_spread" in m] == [4]
    with pytest.raises(ValueError, match="target='net' is not an nn.Module attribute of TinyLM"):
        _fit(tmp_path, TelemetryCallback(every=1, target="net"))
