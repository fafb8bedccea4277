"""The validation protocol (deepscalelm.validate) and the ``dslm validate`` command."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from deepscalelm.validate import grid_points, percentiles, run_points
from deepscalelm.validate.checks import authors_grid, quick_grid, random_grid
from deepscalelm.validate.protocol import calc_err, measure

torch.set_num_threads(1)


def test_calc_err_cases():
    assert calc_err(2.0, 1.5) == pytest.approx(0.25)
    assert calc_err(0.01, 0.0, 2.0) == pytest.approx(0.005)          # min(|a|, |a|/pred_var)
    assert calc_err(0.5, 0.0, 0.1) == pytest.approx(0.5)
    assert calc_err(1e-3, 2e-3, 1.0) == pytest.approx(1e-3)           # near zero: scale by var
    assert calc_err(1.0, 1.1, 0.01) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="pred_var"):
        calc_err(1.0, 1.0, 0.0)


def test_percentiles_use_entry_k_total_over_100():
    errs = [i / 100 for i in range(200)][::-1]
    assert percentiles(errs) == [1.0, 1.8, 1.98]
    assert percentiles([0.3]) == [0.3, 0.3, 0.3]
    with pytest.raises(ValueError, match="errors"):
        percentiles([])


def test_measure_matches_torch_cov_definition():
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(5, 7, 3, generator=gen, dtype=torch.float64)
    y[:, :, 0] += torch.randn(5, 1, generator=gen, dtype=torch.float64)
    m = measure(y, hidden=True)
    c = torch.cov(y.permute(1, 0, 2).reshape(7, 15))
    off = (c.sum() - c.diagonal().sum()) / (7 * 6)
    assert m["cov"] == pytest.approx(float(off), rel=1e-12)
    h = torch.cov(y.permute(2, 0, 1).reshape(3, 35))
    assert m["hidden_cov"] == pytest.approx(float((h.sum() - h.diagonal().sum()) / 6), rel=1e-12)
    assert m["var"] == pytest.approx(float((y * y).mean() - y.mean() ** 2))


def test_grids():
    assert len(authors_grid("linear")) == 13122
    assert len(authors_grid("relu")) == 450 and len(authors_grid("gelu")) == 450
    assert len(authors_grid("layernorm")) == 4050
    assert len(authors_grid("dropout")) == 4374
    assert len(authors_grid("softmax")) == 625
    assert len(authors_grid("attention")) == 26244
    a, b = random_grid("attention", 5, 1), random_grid("attention", 5, 2)
    assert a == random_grid("attention", 5, 1) and a != b
    assert quick_grid("linear") and grid_points("relu", "random", 3, 4)
    with pytest.raises(ValueError, match="component"):
        grid_points("conv", "quick")
    with pytest.raises(ValueError, match="grid"):
        grid_points("relu", "huge")


def test_run_points_reports_percentiles():
    pts = random_grid("relu", 3, seed=9)
    for p in pts:
        p.update(runs=16, L=16, d=16)
    res = run_points("relu", pts, seed=1)
    assert res["x var"]["n"] == 3 and len(res["x var"]["percentiles"]) == 3
    # 16*16 shared samples per point: 4 standard errors of a variance plus 2%
    assert max(res["x var"]["errors"]) < 0.02 + 4 * math.sqrt(2 / 256)


def _args(**kw):
    base = dict(component="relu", quick=True, grid=None, seed=3, points=4, stride=9, json=None, strict=False)
    base.update(kw)
    return argparse.Namespace(**base)


def test_cli_validate_runs_and_writes_json(tmp_path, capsys):
    from deepscalelm.commands import validate as cmd

    out = tmp_path / "v.json"
    assert cmd.run(_args(json=str(out))) == 0
    text = capsys.readouterr().out
    assert "relu" in text and "x var" in text and "0.5/1.9/3.4" in text   # authors' reference
    data = json.loads(out.read_text())
    assert data["results"]["relu"]["quantities"]["x var"]["n"] == 2
    last = text.strip().splitlines()[-1]
    assert last.startswith(("PASS: ", "FAIL: ")) and data["verdict"] == last
    assert data["passed"] == last.startswith("PASS")


def test_validate_overall_verdict():
    from deepscalelm.commands.validate import PASS_P90_PCT, judged, overall

    def res(p90s):
        return {"attention": {"quantities": {q: {"percentiles_pct": [1.0, v, v]} for q, v in p90s.items()}}}

    ok, line = overall(res({"x var": 4.0, "g var": PASS_P90_PCT, "g var [paper]": 80.0}))
    assert ok and line.startswith("PASS: 2 of 2 quantities")
    ok, line = overall(res({"x var": 4.0, "g var": PASS_P90_PCT + 0.1}))
    assert not ok and line.startswith("FAIL: 1 of 2") and "attention g var 15.1 %" in line
    assert judged("x var [full]") and not judged("x var [approx]") and not judged("g var [no qk]")


def test_cli_validate_is_registered_and_rejects_bad_input():
    from deepscalelm.cli import build_parser
    from deepscalelm.commands import validate as cmd

    args = build_parser().parse_args(["validate", "--component", "relu", "--quick"])
    assert args.func is cmd.run
    with pytest.raises(ValueError, match="--component"):
        cmd.run(_args(component="conv"))
    with pytest.raises(ValueError, match="--stride"):
        cmd.run(_args(stride=0))
