"""benchmarks/gpu.py on CPU with the tiny shapes: the JSON it writes, its FLOP count, ratios and time box."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "benchmarks" / "gpu.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = mod  # dataclasses look their module up while the file executes
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("bench_gpu", None)


def test_tiny_eager_run_writes_consistent_json(gpu, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "tiny.json"
    assert gpu.main(["--tiny", "--modes", "eager", "--peak-flops", "1e12", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    cases = res["cases"]
    assert [(c["shape"], c["model"]) for c in cases] == [(s, m) for s in ("tiny-d64xL2", "tiny-d32xL8")
                                                         for m in ("ours", "hf")]
    assert res["device_type"] == "cpu" and res["precision"] == "fp32" and res["peak_source"] == "--peak-flops"
    for c in cases:
        assert c["status"] == "ok" and c["timed_steps"] >= 2 and c["tokens_per_s"] > 0
        assert c["loss_first"] == pytest.approx(5.55, abs=0.8)  # ~ln(256): random init, byte vocabulary
        assert c["flops_per_token"] == 6 * c["n_params"] + 12 * c["n_layers"] * c["d_model"] * c["seq_len"]
        assert c["tokens_per_s"] == pytest.approx(c["batch"] * c["seq_len"] / c["s_per_step"])
        assert c["mfu"] == pytest.approx(c["flops_per_token"] * c["tokens_per_s"] / 1e12)
    for i in (0, 2):  # the same shape: HF GPT-2 and ours have the same parameter count
        assert cases[i]["n_params"] == cases[i + 1]["n_params"]
    d = 64
    emb_and_ln_f = 256 * d + 2 * d  # tied token embedding + final norm (the position table is not counted)
    assert cases[0]["n_params"] == emb_and_ln_f + 2 * (12 * d * d + 13 * d)
    r = {(x["shape"], x["ratio"], x["of"]): x["value"] for x in res["ratios"]}
    assert r[("tiny-d64xL2", "ours/hf", "eager")] == pytest.approx(cases[0]["tokens_per_s"] / cases[1]["tokens_per_s"])
    assert len(r) == 2  # no compiled cases, so no compiled/eager ratio
    text = capsys.readouterr().out
    assert "ours/hf" in text and "compiled/eager" in text and "MFU" in text


def test_budget_skips_cases_and_fails_the_run(gpu, tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    assert gpu.main(["--tiny", "--models", "ours", "--modes", "eager", "--budget-s", "0", "--json", str(out)]) == 1
    res = json.loads(out.read_text())
    assert [c["status"] for c in res["cases"]] == ["skipped", "skipped"] and res["ratios"] == []
    assert "--budget-s" in res["cases"][0]["error"]


def test_peaks_and_bad_input(gpu) -> None:
    assert gpu.lookup_peak("NVIDIA H200") == (989e12, "table: H200")
    assert gpu.lookup_peak("NVIDIA H100 PCIe")[0] == 756e12 and gpu.lookup_peak("NVIDIA H100 80GB HBM3")[0] == 989e12
    assert gpu.lookup_peak("NVIDIA A100-SXM4-80GB")[0] == 312e12 and gpu.lookup_peak("Some GPU") == (None, None)
    assert gpu.peak_flops(torch.device("cpu"), None) == (None, None)
    with pytest.raises(ValueError, match="--peak-flops"):
        gpu.peak_flops(torch.device("cpu"), -1.0)
    with pytest.raises(SystemExit, match="unknown shape"):
        gpu.main(["--tiny", "--shapes", "d1024xL24"])
    with pytest.raises(SystemExit):
        gpu.main(["--tiny", "--steps", "0"])


@pytest.mark.slow
def test_tiny_compiled_run_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "c.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--tiny", "--shapes", "tiny-d32xL8",
                    "--json", str(out)], check=True, cwd=ROOT, timeout=900)
    res = json.loads(out.read_text())
    assert all(c["status"] == "ok" for c in res["cases"]) and len(res["cases"]) == 4
    assert {(x["ratio"], x["of"]) for x in res["ratios"]} == {("ours/hf", "eager"), ("ours/hf", "compiled"),
                                                              ("compiled/eager", "ours"), ("compiled/eager", "hf")}
    # regional compilation: one graph (plus graph-break pieces) serves all 8 layers, not one per layer
    assert all(0 < c["graphs_compiled"] < 8 for c in res["cases"] if c["mode"] == "compiled")
    first = {(c["model"], c["mode"]): c["loss_first"] for c in res["cases"]}
    for m in ("ours", "hf"):  # the compiled model computes the same function
        assert first[(m, "compiled")] == pytest.approx(first[(m, "eager")], rel=1e-4)
