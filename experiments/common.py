"""Shared helpers for the reproduction studies in `experiments/`.

Every study script is one command with a `--quick` mode; it writes a JSON log to
`experiments/results/<study>[_quick].json` (the command line, the machine, CPU and wall time, every
number) and PNG figures to `docs/figures/results/`. Scripts run on one CPU thread.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from deepscalelm.data.text import builtin_bytes
from deepscalelm.datasets import data_root
from deepscalelm.train.optim import param_groups, schedule

ROOT = Path(__file__).resolve().parents[1]
# DSLM_EXPERIMENTS_OUT redirects logs and figures (used by the smoke test so it never overwrites results)
_OUT = os.environ.get("DSLM_EXPERIMENTS_OUT")
RESULTS = Path(_OUT) if _OUT else ROOT / "experiments" / "results"
FIGURES = Path(_OUT) if _OUT else ROOT / "docs" / "figures" / "results"
DATA = data_root()  # --data-dir of the experiments, else $DSLM_DATA, else ./data (docs/data.md)


def setup(threads: int = 1) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch

    torch.set_num_threads(threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    FIGURES.mkdir(parents=True, exist_ok=True)


def _clean(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None if math.isnan(o) else ("inf" if o > 0 else "-inf")
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, (np.floating,)):
        return _clean(float(o))
    if isinstance(o, (np.integer,)):
        return int(o)
    return o


class Log:
    """Collects a study's results and writes them as JSON with the command and timings."""

    def __init__(self, study: str, quick: bool, args: dict) -> None:
        self.name = f"{study}{'_quick' if quick else ''}"
        self.t0, self.c0 = time.time(), time.process_time()
        import torch

        self.data = {"study": study, "quick": quick,
                     "command": "PYTHONPATH=src python "
                                + " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
                     "args": args,
                     "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                 "torch": torch.__version__, "python": platform.python_version(),
                                 "platform": platform.platform(),
                                 "note": "shared 2-core CPU machine, other jobs running; one thread"},
                     "started": time.strftime("%Y-%m-%d %H:%M:%S")}

    def __setitem__(self, k, v):
        self.data[k] = v

    def __getitem__(self, k):
        return self.data[k]

    def path(self) -> Path:
        return RESULTS / f"{self.name}.json"

    def fig(self, stem: str) -> Path:
        return FIGURES / f"{self.name}_{stem}.png"

    def save(self) -> Path:
        self.data["wall_s"] = round(time.time() - self.t0, 2)
        import resource

        ch = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.data["cpu_s"] = round(time.process_time() - self.c0 + ch.ru_utime + ch.ru_stime, 2)
        p = self.path()
        p.write_text(json.dumps(_clean(self.data), indent=1))
        print(f"wrote {os.path.relpath(p, ROOT)} (wall {self.data['wall_s']} s, cpu {self.data['cpu_s']} s)")
        return p


# ----------------------------------------------------------------------------------------- data
def shakespeare_bytes() -> tuple[np.ndarray, np.ndarray]:
    """Tiny Shakespeare (the corpus shipped in the package) as byte ids: first 90 % train, last 10 % validation."""
    raw = np.frombuffer(builtin_bytes(), dtype=np.uint8)
    n = int(0.9 * len(raw))
    return raw[:n].astype(np.int64), raw[n:].astype(np.int64)


def ptb_words() -> tuple[np.ndarray, np.ndarray, int]:
    """Penn Treebank (Mikolov) word ids from <data root>/ptb (read in place, never copied)."""
    vocab: dict[str, int] = {}

    def read(name: str) -> np.ndarray:
        ids = []
        for line in (DATA / "ptb" / name).read_text().splitlines():
            for w in line.split() + ["<eos>"]:
                ids.append(vocab.setdefault(w, len(vocab)))
        return np.asarray(ids, dtype=np.int64)

    tr = read("ptb.train.txt")
    va = read("ptb.valid.txt")
    return tr, va, len(vocab)


def same_token_prob(ids: np.ndarray, vocab: int) -> float:
    p = np.bincount(ids, minlength=vocab) / len(ids)
    return float((p ** 2).sum())


def windows(data: np.ndarray, batch: int, seq_len: int, rng: np.random.Generator):
    import torch

    idx = rng.integers(0, len(data) - seq_len - 1, size=batch)
    return torch.from_numpy(np.stack([data[i:i + seq_len] for i in idx]))


def median(xs):
    return float(np.median(np.asarray(xs, dtype=float)))


# ------------------------------------------------------------------------------------- training
def train_lm(cfg, train_ids: np.ndarray, val_ids: np.ndarray, *, steps: int, batch: int, lr: float,
             seed: int = 0, warmup: int = 10, min_lr_ratio: float = 0.1, weight_decay: float = 0.1,
             grad_clip: float = 1.0, eval_batches: int = 8, eval_every: int | None = None,
             stop_on_nan: bool = True, measure_at: tuple = (), measure_batch=None) -> dict:
    """A minimal AdamW loop (betas 0.9/0.95, linear warm-up, cosine decay to min_lr_ratio*lr, global
    grad-norm clipping, weight decay on matrices only) for a `deepscalelm` decoder on token-id arrays.
    Schedule and parameter groups are the package's (`deepscalelm.train.optim.schedule` with
    ``decay_lag=1``, the studies' schedule; `deepscalelm.train.optim.param_groups`).

    Returns the loss curve, validation loss (nats/token, fixed validation windows), wall/CPU time
    of the steps (evaluation excluded) and a divergence flag. `measure_at`: steps at which to run
    `deepscalelm.measure(model.train(), measure_batch)` (paper protocol) and keep the per-layer moments.
    """
    import torch

    import deepscalelm

    torch.manual_seed(seed)
    model = deepscalelm.build_model(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    n_emb = sum(p.numel() for n, p in model.named_parameters() if "emb" in n or "pos" in n)
    opt = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.95))

    def lr_at(s):  # s is 0-based: the package's step s + 1, with the decay one step late (decay_lag=1)
        return schedule(s + 1, lr=lr, warmup_steps=warmup, max_steps=steps, decay="cosine",
                        min_lr_ratio=min_lr_ratio, decay_lag=1)

    rng = np.random.default_rng(seed + 1000)
    vrng = np.random.default_rng(12345)
    val_batches = [windows(val_ids, batch, cfg.seq_len, vrng) for _ in range(eval_batches)]

    def evaluate():
        model.eval()
        with torch.no_grad():
            v = float(np.mean([float(model.loss(b)) for b in val_batches]))
        model.train()
        return v

    moments = {}

    def snap(step):
        if step in measure_at and measure_batch is not None:
            tr = deepscalelm.measure(model.train(), measure_batch, protocol="paper", seed=0)
            moments[step] = [{"layer": r.layer, "block": r.block, "var": r.var, "corr": r.corr,
                              "grad_var": r.grad_var} for r in tr]

    curve, evals, step_s = [], [], 0.0
    cpu0 = time.process_time()
    diverged, stopped_at = False, None
    model.train()
    snap(0)
    for s in range(steps):
        for gr in opt.param_groups:
            gr["lr"] = lr_at(s)
        xb = windows(train_ids, batch, cfg.seq_len, rng)
        t = time.perf_counter()
        loss = model.loss(xb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf")))
        lv = float(loss.detach())
        if not (math.isfinite(lv) and math.isfinite(gn)):
            diverged, stopped_at = True, s
            curve.append(lv)
            if stop_on_nan:
                break
        opt.step()
        step_s += time.perf_counter() - t
        curve.append(lv)
        if eval_every and (s + 1) % eval_every == 0 and s + 1 < steps:
            evals.append((s + 1, evaluate()))
    snap(steps if not diverged else -1)
    cpu = time.process_time() - cpu0
    val = evaluate() if not diverged else float("nan")
    evals.append((len(curve), val))
    return {"n_params": n_params, "n_params_non_embedding": n_params - n_emb, "loss_curve": curve,
            "val_loss": val, "val_curve": evals, "diverged": diverged, "stopped_at": stopped_at,
            "train_seconds": step_s, "cpu_seconds": cpu, "seconds_per_step": step_s / max(1, len(curve)),
            "moments": moments}
