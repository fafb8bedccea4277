"""Smoke test for experiments/: every study script parses its arguments, and the cheapest paths run
on tiny sizes in seconds (logs go to a temporary directory, never to experiments/results)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXP = ROOT / "experiments"
SCRIPTS = sorted(p.name for p in EXP.glob("s[0-9]*_*.py"))


def _run(args, tmp_path, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), DSLM_EXPERIMENTS_OUT=str(tmp_path), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], cwd=EXP, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script, tmp_path):
    r = _run([script, "--help"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "--quick" in r.stdout


def test_depth_tiny(tmp_path):
    pytest.importorskip("torch")
    r = _run(["s2_depth.py", "--quick", "--depths", "2", "--d-model", "16", "--batch", "2", "--seq", "8"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "s2_depth_quick.json").is_file()


def test_stability_tiny(tmp_path):
    pytest.importorskip("torch")
    r = _run(["s5_stability.py", "--quick", "--depths", "2", "--lrs", "1e-3", "--steps", "10", "--d-model", "16",
              "--seq", "8", "--batch", "2"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "s5_stability_quick.json").is_file()
