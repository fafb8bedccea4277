"""Image corruptions and the robustness summary: seeded, monotone in severity, shape/range-preserving."""

from __future__ import annotations

import numpy as np
import pytest

from deepscalelm.finetune.robustness import CORRUPTIONS, corrupt, robustness


def images(n: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 28, 28), dtype=np.float32)
    x[:, 8:20, 10:18] = rng.uniform(0.5, 1.0, size=(n, 1, 1))  # a bright rectangle per image
    return x


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruptions_are_seeded_bounded_and_grow_with_severity(name: str) -> None:
    x = images()
    dist = []
    for s in (1, 3, 5):
        y = corrupt(x, name, s, seed=3)
        assert y.shape == x.shape and y.dtype == np.float32 and y.min() >= 0 and y.max() <= 1
        assert np.array_equal(y, corrupt(x, name, s, seed=3))
        dist.append(float(np.abs(y - x).mean()))
    assert dist[0] > 0 and dist[0] < dist[1] < dist[2]
    assert np.array_equal(x, images())  # input untouched


def test_specific_corruptions() -> None:
    x = images()
    c = corrupt(x, "contrast", 5)
    assert np.allclose(c.mean(axis=(1, 2)), x.mean(axis=(1, 2)), atol=1e-6)
    assert c.std() < 0.2 * x.std()
    assert not np.array_equal(corrupt(x, "gaussian_noise", 2, seed=0), corrupt(x, "gaussian_noise", 2, seed=1))
    b = corrupt(x, "blur", 3)
    assert abs(b.sum() - x.sum()) / x.sum() < 0.02  # blurring keeps the mass of an interior object


def test_bad_input_raises() -> None:
    x = images()
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(x, "fog", 1)
    with pytest.raises(ValueError, match="severity"):
        corrupt(x, "blur", 6)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        corrupt(x * 255, "blur", 1)
    with pytest.raises(ValueError, match="floats"):
        corrupt((x * 255).astype(np.uint8), "blur", 1)
    with pytest.raises(ValueError, match="labels"):
        robustness(lambda im: np.zeros(len(im)), x, np.zeros(3))


def test_robustness_summary_of_a_threshold_classifier() -> None:
    x = images(40, seed=1)
    y = (x[:, 8:20, 10:18].mean(axis=(1, 2)) > 0.75).astype(np.int64)

    def predict(im: np.ndarray) -> np.ndarray:  # brightness of the rectangle region
        return (im[:, 8:20, 10:18].mean(axis=(1, 2)) > 0.75).astype(np.int64)

    r = robustness(predict, x, y, severities=(1, 5))
    assert r["clean"] == 1.0
    assert r["per"]["contrast"]["5"] <= r["per"]["contrast"]["1"] and r["per"]["contrast"]["5"] < 1.0
    vals = [a for v in r["per"].values() for a in v.values()]
    assert r["mean_corruption_acc"] == pytest.approx(np.mean(vals))
    assert r["relative_robustness"] == pytest.approx(r["mean_corruption_acc"])
