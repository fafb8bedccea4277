"""``dslm check --hf DIR`` on tiny saved Hugging Face models: measured beside predicted, DSLM units
for folded checkpoints, measured only (with a note) where the theory does not cover the model (rope with qk_norm)."""

from __future__ import annotations

import json

import pytest

from deepscalelm.cli import main

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=6, n_embd=64, n_head=4, vocab_size=256, n_positions=128, bos_token_id=0,
        eos_token_id=0)).save_pretrained(root / "gpt2")
    transformers.LlamaForCausalLM(transformers.LlamaConfig(
        num_hidden_layers=4, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
        vocab_size=256, max_position_embeddings=128)).save_pretrained(root / "llama")
    for name in ("gpt2", "llama"):
        assert main(["apply", "--hf", str(root / name), "--out", str(root / f"{name}_dslm")]) == 0
    return root


def _check(folder, tmp_path, *extra):
    out = tmp_path / "report.json"
    rc = main(["check", "--hf", str(folder), "--seq-len", "32", "--eval", "--json", str(out), *extra])
    return rc, json.loads(out.read_text())


def test_default_init_is_measured_beside_predicted(folders, tmp_path):
    rc, rep = _check(folders / "gpt2", tmp_path, "--plot", str(tmp_path / "p.png"))
    assert rc == 0 and rep["meta"]["predicted"] and "dslm_units" not in rep["meta"]
    assert (tmp_path / "p.png").stat().st_size > 10_000
    layers = [r for r in rep["rows"] if r["block"] == "layer"]
    assert len(layers) == 6 and all(r["pred_var"] is not None for r in layers)
    assert layers[0]["var"] < 0.01  # GPT-2's N(0, 0.02^2) stream is tiny ...
    assert all(0.5 < r["var"] / r["pred_var"] < 2 for r in layers)  # ... and predicted so


def test_folded_dslm_checkpoint_is_compared_in_dslm_units(folders, tmp_path, capsys):
    rc, rep = _check(folders / "gpt2_dslm", tmp_path, "--strict")
    assert "folded checkpoint shown in DSLM units" in capsys.readouterr().out and rep["meta"]["dslm_units"]
    assert rc == 0, [v["message"] for v in rep["verdicts"]]  # no verdict: agrees with the prediction
    for r in rep["rows"]:
        assert 0.7 < r["var"] < 1.4 and r["pred_var"] == pytest.approx(1.0, abs=1e-4), r
        assert 0.5 < r["grad_var"] / r["pred_grad_var"] < 2, r


def test_rope_models_are_measured_beside_their_prediction(folders, tmp_path, capsys):
    rc, rep = _check(folders / "llama_dslm", tmp_path)
    out = capsys.readouterr().out
    assert rc == 0 and rep["meta"]["predicted"] and "measured only" not in out
    assert all(r["pred_var"] is not None for r in rep["rows"]) and len(rep["rows"]) == 5
    assert "dslm_units" in rep["meta"]
    # stream variance in DSLM units close to the predicted 1 (token correlation on byte text is not: docs/rope.md)
    assert all(0.5 < r["var"] / r["pred_var"] < 2 for r in rep["rows"])


def test_bad_folders_are_refused(tmp_path, capsys):
    assert main(["check", "--hf", str(tmp_path)]) != 0
    assert "has no config.json" in capsys.readouterr().err


def test_configs_from_hf_refuses_are_measured_only(tmp_path, capsys):
    folder = tmp_path / "gpt2_inv"
    transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=4, vocab_size=256, n_positions=64, bos_token_id=0, eos_token_id=0,
        scale_attn_by_inverse_layer_idx=True)).save_pretrained(folder)
    assert main(["check", "--hf", str(folder), "--eval"]) == 0
    out = capsys.readouterr().out
    assert "no deepscalelm config: ModelConfig.from_hf: GPT-2 with scale_attn_by_inverse_layer_idx" in out
    assert "L=" not in out.splitlines()[0] and "shape [8, 64]" in out  # the model's own 64 positions
