"""``dslm predict`` end to end: table formatting, column help, plots against the layer, scheme overlay."""

from __future__ import annotations

import pytest

from deepscalelm.cli import main
from deepscalelm.commands.predict import COLUMN_HELP, fixed
from deepscalelm.plotting import layer_axis_label, layer_positions


def test_fixed_never_prints_negative_zero():
    assert fixed(-1.2e-18) == "0.000" and fixed(-0.0) == "0.000" and fixed(-0.0004) == "0.000"
    assert fixed(-0.0006) == "-0.001" and fixed(0.5) == "0.500" and fixed(-0.25, 2) == "-0.25"


def test_predict_table_has_no_negative_zero(capsys):
    # a Post-LN xavier decoder's gradient correlation at the output is about -9e-19 (round-off)
    assert main(["predict", "--norm", "post", "--scheme", "xavier", "--n-layers", "12", "--every", "1"]) == 0
    out = capsys.readouterr().out
    assert "-0.000" not in out and "block_var: variance of the sublayer's own output F" in out


def test_predict_help_explains_block_var(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "block_var = variance of the sublayer's own output F" in text
    assert "block_var" in COLUMN_HELP and "--compare-scheme" in text


def test_layer_positions_and_label():
    keys = [("", 0, "embedding"), ("", 1, "attn"), ("", 1, "ffn"), ("", 2, "attn"), ("", 2, "ffn"),
            ("", 2, "final_norm")]
    xs, starts = layer_positions(keys)
    assert xs == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5] and starts == [] and layer_axis_label(keys) == "layer"
    two = [("encoder", 0, "embedding"), ("encoder", 1, "ffn"), ("decoder", 0, "embedding"), ("decoder", 1, "attn"),
           ("decoder", 1, "cross_attn"), ("decoder", 1, "ffn")]
    xs, starts = layer_positions(two)
    assert xs[:3] == [0.0, 1.0, 2.0] and xs[3:] == pytest.approx([2 + 1 / 3, 2 + 2 / 3, 3.0])
    assert starts == [(2.0, "decoder")] and layer_axis_label(two) == "layer (encoder, then decoder)"


def test_predict_plot_overlays_a_second_scheme(tmp_path, capsys, monkeypatch):
    import matplotlib.axes

    drawn: list[tuple[str, str]] = []
    xlabels: list[str] = []
    orig_plot, orig_xlabel = matplotlib.axes.Axes.plot, matplotlib.axes.Axes.set_xlabel

    def plot(self, *args, **kw):
        drawn.append((kw.get("label"), kw.get("color")))
        return orig_plot(self, *args, **kw)

    def set_xlabel(self, text, *a, **kw):
        xlabels.append(text)
        return orig_xlabel(self, text, *a, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", plot)
    monkeypatch.setattr(matplotlib.axes.Axes, "set_xlabel", set_xlabel)
    png = tmp_path / "p.png"
    assert main(["predict", "--n-layers", "8", "--plot", str(png), "--compare-scheme", "xavier"]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert {label for label, _c in drawn} == {"dslm (pre-LN), predicted", "xavier (pre-LN), predicted"}
    assert len({c for _l, c in drawn}) == 2 and set(xlabels) == {"layer"}
    capsys.readouterr()
    assert main(["predict", "--n-layers", "8", "--compare-scheme", "xavier"]) == 2
    assert "--plot" in capsys.readouterr().err


def test_check_table_has_no_negative_zero_either():
    from deepscalelm.diagnostics.report import _num

    assert _num(-0.0004, "8.3f") == "   0.000" and _num(-0.002, "8.3f") == "  -0.002" and _num(None, "8.3f") == ""
