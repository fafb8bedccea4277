"""deepscalelm.formatting: mean ± std over seeds without a meaningless ± for one seed."""

from __future__ import annotations

import pytest

from deepscalelm.formatting import mean_std_text


def test_one_seed_has_no_plus_minus():
    assert mean_std_text(0.8125, 0.0, 1) == "0.8125 (1 seed)"
    assert mean_std_text(0.8125, 0.01, 3) == "0.8125 ± 0.0100 over 3 seeds"
    assert mean_std_text(0.5, 0.25, 2, digits=2) == "0.50 ± 0.25 over 2 seeds"
    with pytest.raises(ValueError, match="number of seeds"):
        mean_std_text(0.5, 0.1, 0)
