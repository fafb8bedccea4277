"""deepscalelm.diagnostics.check: statistics against direct computations, verdicts, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from deepscalelm import DSLMError, ModelConfig, build_model
from deepscalelm.diagnostics import (
    GRAD_RATIO,
    PRED_CORR_DIFF,
    PRED_VAR_FACTOR,
    RANK_COLLAPSE_CORR,
    SATURATION_LOGIT_VAR,
    check,
    stream_moments,
)
from deepscalelm.diagnostics.verdicts import judge, linear_fit, prediction_mismatch
from deepscalelm.measure import measure, moments

torch.set_num_threads(1)


def _ids(B: int, L: int, V: int = 256, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(seed))


def _model(seed: int = 0, **kw) -> nn.Module:
    base = dict(n_layers=3, d_model=32, n_heads=4, seq_len=16)
    base.update(kw)
    torch.manual_seed(seed)
    return build_model(ModelConfig(**base))


# ------------------------------------------------------------------------------------ statistics
def test_stream_moments_equals_covariance_definition():
    g = torch.Generator().manual_seed(0)
    for shape in [(3, 7, 5), (2, 16, 32), (1, 2, 3)]:
        x = torch.randn(shape, generator=g, dtype=torch.float64) + torch.randn(1, 1, shape[2], generator=g,
                                                                               dtype=torch.float64)
        ref = moments(x)
        got = stream_moments(x)
        assert got[3] is True
        for a, b in zip(ref, got[:3], strict=True):
            assert a == pytest.approx(b, rel=1e-10, abs=1e-12)


def test_stream_moments_nonfinite_and_short():
    x = torch.ones(2, 4, 3)
    x[0, 1, 2] = float("nan")
    assert stream_moments(x)[3] is False and math.isnan(stream_moments(x)[2])
    assert math.isnan(stream_moments(torch.randn(2, 1, 3))[2])
    with pytest.raises(ValueError):
        stream_moments(torch.randn(4, 3))


def test_check_equals_measure_on_our_model():
    """Paper protocol, eval mode: every forward and gradient moment equals deepscalelm.measure."""
    for norm in ("pre", "post"):
        model = _model(norm=norm).eval()
        ids = _ids(4, 16)
        rep = check(model, ids, protocol="paper", seed=3)
        ref = measure(model, ids, protocol="paper", seed=3)
        assert [(r["stack"], r["layer"], r["block"]) for r in rep.rows] == [r.key for r in ref]
        for row, rec in zip(rep.rows, ref, strict=True):
            for k in ("mean", "var", "corr", "grad_var", "grad_corr"):
                assert row[k] == pytest.approx(getattr(rec, k), rel=1e-6, abs=1e-9), (norm, row["name"], k)
        # predicted columns come from deepscalelm.predict joined by key
        assert all(r["pred_var"] is not None for r in rep.rows)
        # paper protocol: the theory's own seed, unit variance and zero correlation at the output
        assert (rep.meta["pred_seed"]["grad_var"], rep.meta["pred_seed"]["grad_corr"]) == (1.0, 0.0)


def test_attention_statistics_equal_direct_softmax():
    model = _model(n_layers=2).eval()
    ids = _ids(3, 16)
    captured = {}
    def grab(_m, inp, _out):  # returns None: a forward hook's return value would replace the output
        captured.setdefault("x", inp[0].detach().clone())

    h = model.layers[1].attn.q.register_forward_hook(grab)
    rep = check(model, ids, protocol="paper")
    h.remove()
    attn = model.layers[1].attn
    x = captured["x"]
    B, L, d = x.shape
    H, dh = attn.n_heads, d // attn.n_heads
    q = attn.q(x).detach().view(B, L, H, dh).transpose(1, 2)
    k = attn.k(x).detach().view(B, L, H, dh).transpose(1, 2)
    s = (q @ k.transpose(-1, -2) / math.sqrt(dh)).double()
    mask = torch.ones(L, L, dtype=torch.bool).tril()
    p = torch.softmax(s.masked_fill(~mask, -math.inf), -1)
    ent = -(p * torch.log(p.clamp_min(1e-300))).sum(-1)  # [B, H, L]
    n = mask.sum(-1).double()
    mean = s.masked_fill(~mask, 0).sum(-1) / n
    var = (s.masked_fill(~mask, 0) ** 2).sum(-1) / n - mean ** 2
    entry = next(a for a in rep.attention if a["name"] == "layers.1.attn")
    for hd in range(H):
        assert entry["entropy"][hd] == pytest.approx(float(ent[:, hd].mean()), rel=1e-5)
        assert entry["logit_var"][hd] == pytest.approx(float(var[:, hd, 1:].mean()), rel=1e-5)
        assert entry["logit_max"][hd] == pytest.approx(float(s[:, hd].masked_fill(~mask, -math.inf).max()), rel=1e-5)
        assert entry["entropy_norm"][hd] == pytest.approx(float((ent[:, hd, 1:] / n[1:].log()).mean()), rel=1e-5)
    row = next(r for r in rep.rows if r["name"] == "layers.1.attn")
    assert row["logit_var"] == pytest.approx(max(entry["logit_var"]))


def test_weight_gradient_norms_equal_backward_and_grad_untouched():
    model = _model(dropout=0.0, attn_dropout=0.0)
    ids = _ids(4, 16)
    rep = check(model, ids)  # loss protocol: model.loss
    assert all(p.grad is None for p in model.parameters())
    model.loss(ids).backward()
    for w in rep.weights:
        p = dict(model.named_parameters())[w["name"]]
        assert w["grad_norm"] == pytest.approx(float(p.grad.double().norm()), rel=1e-5, abs=1e-12)
    # loss protocol: the theory is seeded with the gradient moments measured at the output
    last = rep.rows[-1]
    assert last["pred_grad_var"] == pytest.approx(last["grad_var"], rel=1e-9)
    assert rep.meta["pred_seed"]["grad_corr"] == pytest.approx(last["grad_corr"], rel=1e-9)


def test_custom_module_with_glob():
    class Block(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.lin = nn.Linear(d, d)

        def forward(self, x):
            return x + self.lin(x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(Block(8) for _ in range(3))

        def forward(self, x):
            for b in self.blocks:
                x = b(x)
            return x

    torch.manual_seed(0)
    net = Net()
    x = torch.randn(2, 5, 8)
    rep = check(net, x, streams="blocks.*", protocol="paper")
    assert [r["name"] for r in rep.rows] == ["blocks.0", "blocks.1", "blocks.2"]
    ref = moments(net.blocks[1](net.blocks[0](x)))
    assert rep.rows[1]["var"] == pytest.approx(ref[1], rel=1e-9)
    assert rep.rows[1]["corr"] == pytest.approx(ref[2], rel=1e-9)
    assert rep.rows[0]["pred_var"] is None


def test_linear_fit_matches_numpy():
    rng = np.random.default_rng(0)
    x = np.arange(10.0)
    y = 2 + 0.5 * x + rng.normal(size=10)
    a, b, r2 = linear_fit(list(x), list(y))
    bb, aa = np.polyfit(x, y, 1)
    assert (a, b) == pytest.approx((aa, bb), rel=1e-9)
    assert r2 == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2, rel=1e-9)


# -------------------------------------------------------------------------------------- verdicts
DEEP = dict(n_layers=96, d_model=32, n_heads=4, seq_len=32)


def _deep(**kw):
    return _model(**{**DEEP, **kw})


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_dslm_is_silent(norm):
    # d_model 64: at width 32 one weight draw can drift from the (infinite-width) prediction by more
    # than the tolerance over 96 layers, which the prediction_mismatch verdict then rightly reports
    rep = check(_deep(norm=norm, d_model=64), _ids(4, 32))
    assert rep.verdicts == [], rep.summary()
    assert "agree within" in rep.summary()
    rep = check(_deep(norm=norm, d_model=64), _ids(4, 32), protocol="paper")
    assert rep.verdicts == [], rep.summary()


def test_loss_protocol_prediction_is_seeded_with_the_measured_output_gradient():
    """The loss gradient at the output is correlated across tokens; a unit-variance, uncorrelated
    seed rescaled at the output underestimates the gradient near the input of a deep causal stack
    by more than the tolerance, the seeded prediction does not (48 layers, text batch)."""
    from deepscalelm.commands.check import _batch
    from deepscalelm.theory.model import predict

    config = ModelConfig(n_layers=48, d_model=64, n_heads=4, seq_len=64)
    torch.manual_seed(0)
    model = build_model(config)
    ids, _targets, _what = _batch(None, config, 16, 0)
    rep = check(model, ids)
    out, emb = rep.rows[-1], rep.rows[0]
    assert out["grad_corr"] > 0.02  # next-token targets repeat: the output gradient is correlated
    assert rep.meta["pred_seed"]["grad_corr"] == pytest.approx(out["grad_corr"])
    assert max(emb["grad_var"] / emb["pred_grad_var"], emb["pred_grad_var"] / emb["grad_var"]) < PRED_VAR_FACTOR
    assert "prediction_mismatch" not in rep.verdict_kinds(), rep.summary()
    unit = predict(config)
    rescaled = unit.records[0].grad_var * out["grad_var"] / unit.records[-1].grad_var
    assert emb["grad_var"] / rescaled > PRED_VAR_FACTOR


def _rows(var, pred_var, corr=0.3, pred_corr=0.3):
    return [{"stack": "", "layer": i, "block": "ffn", "name": f"layers.{i}", "var": v, "pred_var": p,
             "corr": corr, "pred_corr": pred_corr, "grad_var": 1.0, "pred_grad_var": 1.0}
            for i, (v, p) in enumerate(zip(var, pred_var, strict=True))]


def test_prediction_mismatch_verdict_and_tolerances():
    assert prediction_mismatch(_rows([1.0, 1.9], [1.0, 1.0])) == []
    v = prediction_mismatch(_rows([1.0, 1.0, 0.3], [1.0, 1.0, 1.0]))
    assert len(v) == 1 and v[0].kind == "prediction_mismatch" and v[0].details["quantity"] == "var"
    assert v[0].layer == 2 and v[0].details["disagreement"] == pytest.approx(1 / 0.3)
    assert "0.3 measured vs 1 predicted" in v[0].message and "tolerance ×2" in v[0].message
    c = prediction_mismatch(_rows([1.0], [1.0], corr=0.8, pred_corr=0.8 - PRED_CORR_DIFF - 0.01))
    assert [x.details["quantity"] for x in c] == ["corr"]
    # no prediction, or a non-finite measurement: nothing to compare
    assert prediction_mismatch(_rows([1.0], [None])) == [] and prediction_mismatch(_rows([math.nan], [1.0])) == []


def test_summary_never_says_no_problems_when_measured_and_predicted_disagree():
    model = _model(n_layers=4)
    rep = check(model, _ids(4, 16), protocol="paper")
    for r in rep.rows:
        r["pred_grad_var"] = 3 * PRED_VAR_FACTOR * r["grad_var"]
    rep.verdicts[:] = judge(rep.rows, rep.attention)
    assert "prediction_mismatch" in rep.verdict_kinds()
    assert "no problems" not in rep.summary() and "gradient variance disagree" in rep.summary()


def test_prenorm_xavier_linear_variance_growth():
    rep = check(_deep(scheme="xavier"), _ids(4, 32))
    v = next(v for v in rep.verdicts if v.kind == "variance_growth")
    assert "linearly" in v.message and "consider DSLM" in v.message
    assert v.details["r2_linear"] >= 0.9 and v.details["slope"] > 0


def test_postnorm_geometric_gradients():
    rep = check(_deep(scheme="normal", norm="post", std=0.2), _ids(4, 32), protocol="paper")
    v = next(v for v in rep.verdicts if v.kind == "gradient_geometric")
    assert "shrink geometrically toward the input" in v.message
    assert v.details["ratio_input_over_output"] < 1 / GRAD_RATIO
    assert v.details["factor_per_layer_toward_input"] < 1


def test_rank_collapse_without_dropout():
    rep = check(_deep(scheme="xavier", dropout=0.0, attn_dropout=0.0), _ids(4, 32))
    v = next(v for v in rep.verdicts if v.kind == "rank_collapse")
    series = [r for r in rep.rows if r["block"] == "ffn"]
    assert all(r["corr"] > RANK_COLLAPSE_CORR for r in series[v.layer - 1:])
    assert series[v.layer - 2]["corr"] <= RANK_COLLAPSE_CORR


def test_scaled_qk_saturates_softmax():
    model = _model(n_layers=4, seq_len=32)
    ids = _ids(4, 32)
    assert "softmax_saturation" not in check(model, ids).verdict_kinds()
    with torch.no_grad():
        for layer in model.layers:
            layer.attn.q.weight.mul_(4.0)
            layer.attn.k.weight.mul_(4.0)
    rep = check(model, ids)
    v = next(v for v in rep.verdicts if v.kind == "softmax_saturation")
    assert v.details["logit_var"] > SATURATION_LOGIT_VAR and "layer 1" in v.message


def test_nonfinite_is_a_verdict_at_the_right_layer():
    model = _model(n_layers=4)
    with torch.no_grad():
        model.layers[2].ffn.fc2.weight[0, 0] = float("inf")
    rep = check(model, _ids(2, 16))
    v = rep.verdicts[0]
    assert v.severity == "error" and v.kind in ("nonfinite_loss", "nonfinite_forward")
    fwd = next(v for v in rep.verdicts if v.kind == "nonfinite_forward")
    assert fwd.layer == 3 and fwd.name == "layers.2.ffn"


# ------------------------------------------------------------------------------------ bad input
def test_unknown_module_names_list_closest():
    model = _model()
    with pytest.raises(DSLMError, match="closest module names: .*layers.0"):
        check(model, _ids(2, 16), streams=["layers.O"])
    with pytest.raises(DSLMError, match="matches no module"):
        check(model, _ids(2, 16), streams="blocks.*")
    with pytest.raises(DSLMError, match="cannot tell which modules"):
        check(nn.Sequential(nn.Linear(4, 4)), torch.randn(2, 3, 4))


def test_short_sequence_and_bad_protocol():
    model = _model()
    with pytest.raises(ValueError, match="at least 2 tokens"):
        check(model, _ids(2, 1))
    with pytest.raises(ValueError, match="protocol"):
        check(model, _ids(2, 4), protocol="adam")
    with pytest.raises(ValueError, match="unknown preset"):
        check(model, _ids(2, 4), preset="t5")


def test_report_outputs(tmp_path):
    rep = check(_model(), _ids(2, 16))
    rep.to_json(tmp_path / "r.json")
    rep.to_csv(tmp_path / "r.csv")
    rep.plot(tmp_path / "r.png")
    import csv
    import json

    data = json.loads((tmp_path / "r.json").read_text())
    assert len(data["rows"]) == len(rep.rows) and data["weights"]
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert float(rows[3]["var"]) == pytest.approx(rep.rows[3]["var"])
    assert (tmp_path / "r.png").stat().st_size > 10_000
    assert "pred" in rep.table()
    rep.plot(tmp_path / "noext")  # no suffix: PNG
    assert (tmp_path / "noext").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="suffixes"):
        rep.plot(tmp_path / "r.nope")


def test_plot_axis_is_the_layer_and_title_names_model_protocol_preset():
    rep = check(_model(n_layers=3), _ids(2, 16))
    xs, starts = rep.layer_axis()
    by = {(r["layer"], r["block"]): x for r, x in zip(rep.rows, xs, strict=True)}
    assert by[(0, "embedding")] == 0 and by[(1, "attn")] == 0.5 and by[(1, "ffn")] == 1.0
    assert by[(3, "ffn")] == 3.0 and by[(3, "final_norm")] == 3.5 and starts == []
    assert rep.default_title().endswith("(loss protocol, preset dslm)") and "3 layers" in rep.default_title()
    config = ModelConfig(arch="encoder-decoder", n_layers=2, d_model=32, n_heads=4, seq_len=16)
    torch.manual_seed(0)
    ids = _ids(2, 32)
    ed = check(build_model(config), (ids[:, :16], ids[:, 16:]))
    xs, starts = ed.layer_axis()
    assert [s for _x, s in starts] == ["decoder"] and xs == sorted(xs) and starts[0][0] == 3.5
