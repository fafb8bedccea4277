"""Parameter groups of the standard and the depth-aware ("dslm") parametrisation."""

from __future__ import annotations

import json
import math

import pytest
import torch

from deepscalelm import ModelConfig
from deepscalelm.models import build_model
from deepscalelm.optim import dslm_effective_depth, effective_depth, find_stacks, param_groups
from deepscalelm.train import checkpoint as ck


def _model(n_layers: int, arch: str = "decoder") -> torch.nn.Module:
    return build_model(ModelConfig(arch=arch, n_layers=n_layers, d_model=16, n_heads=2, seq_len=8, vocab_size=32))


def _covered_once(model: torch.nn.Module, groups: list[dict]) -> None:
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    names = [n for g in groups for n in g["names"]]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())


def test_effective_depth_closed_form() -> None:
    # DSLM: D = 2 (1 - lam^N) / beta exactly, since the sum is geometric
    for n in (4, 64, 2000):
        b = math.sqrt(2 / n)
        lam = math.sqrt(1 - b * b)
        assert dslm_effective_depth(n) == pytest.approx(b * (1 - lam ** n) / (1 - lam), rel=1e-9)
    assert effective_depth([(1.0, 1.0)] * 7) == 7.0


def test_standard_is_one_rate_and_covers_everything() -> None:
    m = _model(3)
    groups = param_groups(m, 1e-3, weight_decay=0.1)
    _covered_once(m, groups)
    assert {g["lr"] for g in groups} == {1e-3}
    assert {g["weight_decay"] for g in groups} == {0.1, 0.0}
    for g in groups:
        assert all(p.ndim >= 2 for p in g["params"]) == (g["weight_decay"] > 0)


@pytest.mark.parametrize("arch", ["decoder", "encoder-decoder"])
def test_dslm_scales_block_rates_by_effective_depth(arch: str) -> None:
    m = _model(32, arch)
    stacks = find_stacks(m)
    assert len(stacks) == (2 if arch == "encoder-decoder" else 1)
    groups = param_groups(m, 1e-2, "dslm", weight_decay=0.1, eps=1e-8)
    _covered_once(m, groups)
    expected = {}  # param id -> (lr, eps) from the stack's own effective depth and beta
    for stack in stacks:
        depth = effective_depth((b.lam, b.beta) for b in stack)
        for b in stack:
            for p in b.parameters():
                expected[id(p)] = (1e-2 * dslm_effective_depth(4) / depth, 1e-8 * b.beta / math.sqrt(0.5))
    for g in groups:
        for p in g["params"]:
            lr, eps = expected.get(id(p), (1e-2, 1e-8))
            assert g["lr"] == pytest.approx(lr, rel=1e-9) and g["eps"] == pytest.approx(eps, rel=1e-9)
        # decoupled decay per step, lr * wd, is the same for every decayed group
        assert g["lr"] * g["weight_decay"] == pytest.approx(1e-3 if g["weight_decay"] else 0.0)
    assert min(g["lr"] for g in groups) < 0.5e-2
    # the embedding (outside the blocks) keeps the reference rate
    emb = next(g for g in groups if any("emb" in n for n in g["names"]))
    assert emb["lr"] == 1e-2


def test_dslm_equals_standard_at_the_reference_depth() -> None:
    m = _model(2)  # 4 residual blocks = base_depth
    assert {round(g["lr"], 15) for g in param_groups(m, 3e-3, "dslm")} == {3e-3}


def test_rate_falls_like_sqrt_depth() -> None:
    lr = [min(g["lr"] for g in param_groups(_model(n), 1.0, "dslm")) for n in (8, 32)]
    assert lr[0] / lr[1] == pytest.approx(2.0, rel=0.05)


def test_width_rule_and_bad_input() -> None:
    m = _model(2)
    groups = param_groups(m, 1.0, "dslm", base_width=8)
    fc2 = next(g for g in groups if any(n.endswith("ffn.fc2.weight") or n.endswith("ffn.w2.weight")
                                       for n in g["names"]))
    assert fc2["lr"] == pytest.approx(8 / 64)  # fan-in d_ff = 64
    with pytest.raises(ValueError, match="parametrization must be one of standard, dslm, completep"):
        param_groups(m, 1.0, "mup")
    with pytest.raises(ValueError, match="lr must be"):
        param_groups(m, float("nan"))
    with pytest.raises(ValueError, match="found no residual blocks in Sequential"):
        param_groups(torch.nn.Sequential(torch.nn.Linear(2, 2)), 1.0, "dslm")
    with pytest.raises(ValueError, match="has no lam/beta"):
        param_groups(m, 1.0, "dslm", blocks=[[torch.nn.Linear(2, 2)]])


def test_groups_build_an_adamw() -> None:
    m = _model(4)
    opt = torch.optim.AdamW(param_groups(m, 1e-3, "dslm"))
    m(torch.randint(0, 32, (2, 8))).float().mean().backward()
    opt.step()


def test_train_uses_the_parametrization(tmp_path) -> None:
    from deepscalelm.train import TrainConfig
    from deepscalelm.train.loop import train

    mcfg = ModelConfig(n_layers=8, d_model=16, n_heads=2, seq_len=16, dropout=0.0, attn_dropout=0.0)
    tcfg = TrainConfig(batch_size=4, max_steps=3, warmup_steps=0, decay="constant", eval_interval=3,
                       eval_batches=1, ckpt_interval=3, sample_tokens=0, lr=1e-3, parametrization="dslm",
                       threads=1)
    res = train(tmp_path / "run", mcfg, tcfg, progress=False)
    assert res.steps == 3 and math.isfinite(res.final["val_loss"])

    state = json.loads((ck.latest_checkpoint(tmp_path / "run") / "state.json").read_text())
    lrs = sorted({g["lr"] for g in state["optimizer"]["param_groups"]})
    assert lrs[-1] == pytest.approx(1e-3) and lrs[0] == pytest.approx(1e-3 * dslm_effective_depth(4)
                                                                       / dslm_effective_depth(16), rel=1e-6)
    with pytest.raises(ValueError, match="parametrization must be one of"):
        TrainConfig(parametrization="mup")


def test_completep_scheme_and_rule() -> None:
    from deepscalelm.theory.schemes import get_scheme

    cfg = ModelConfig(n_layers=16, d_model=16, n_heads=2, seq_len=8, vocab_size=32, scheme="completep")
    s = get_scheme(cfg)
    assert set(s.merges.values()) == {(1.0, 4 / 32)}
    assert s.var("layers.0.ffn.fc2.weight") == pytest.approx(1 / 64) and s.var("tok_emb.weight") == pytest.approx(0.45)
    m = build_model(cfg)
    groups = param_groups(m, 1e-2, "completep")
    _covered_once(m, groups)
    assert {g["lr"] for g in groups} == {1e-2}
    assert sorted({g["eps"] for g in groups}) == pytest.approx([1e-8 * 4 / 32, 1e-8])
    assert get_scheme(cfg.replace(n_layers=2)).merges["layers.0.attn"] == (1.0, 1.0)
