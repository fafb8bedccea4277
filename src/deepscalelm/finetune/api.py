"""Fine-tune a pretrained checkpoint on a downstream task with a learning-rate × seed grid.

Protocol (the paper's fine-tuning recipe, arXiv 2403.09635; choices the paper leaves open are marked
"ours"):

* start every run from the same pretrained weights; a new linear head (see `FinetuneModel`);
* AdamW, betas (0.9, 0.999) (ours: the usual BERT fine-tuning values), eps 1e-8, weight decay 0.01
  on matrices only (biases and LayerNorm parameters are not decayed), gradient clipping at global
  L2 norm 1.0;
* ``steps = ceil(epochs * n_train / batch_size)`` (capped by ``max_steps``); linear warm-up from 0
  over ``warmup_frac * steps`` steps, then linear decay to 0 at ``steps``;
* a grid of learning rates × seeds; every run is evaluated on dev and test; the learning rate with
  the best mean dev accuracy over seeds is chosen (ties: the smaller lr), and its test accuracy is
  reported as mean ± sample standard deviation (ddof = 1) over the seeds. Test accuracy never
  influences the choice.

Outputs (``out/``, written into a staging directory and renamed into place when complete, so an
interrupted call leaves nothing behind): ``results.json`` and, per run,
``runs/lr-<lr>-seed-<seed>/checkpoints/step-<steps>/`` — a regular deepscalelm checkpoint
(``model.safetensors`` with ``backbone.*`` and ``head.*`` tensors, ``state.json`` with the backbone's
``model_config``, the pretraining ``train_config`` and a ``finetune`` section). ``save="best"`` keeps
only the chosen learning rate's runs, ``save="none"`` no weights.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ModelConfig
from ..errors import DSLMError
from ..formatting import mean_std_text
from ..tasks import TaskData, check_labels, load_task
from ..train import checkpoint as ck
from ..train.optim import param_groups, schedule
from .encode import encode_split
from .model import FinetuneModel

logger = logging.getLogger(__name__)

SAVE = ("all", "best", "none")
OBJECTIVE = "finetune"


@dataclass(frozen=True)
class FinetuneConfig:
    """Hyper-parameters of one fine-tuning grid (units: steps are optimizer steps, lengths bytes)."""

    lrs: tuple[float, ...] = (1e-4, 3e-4)
    seeds: tuple[int, ...] = (0, 1)
    epochs: float = 3.0
    max_steps: int | None = None
    batch_size: int = 16
    eval_batch_size: int = 64
    max_len: int = 128
    warmup_frac: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    calib_size: int = 64
    save: str = "all"
    device: str = "cpu"

    def __post_init__(self) -> None:
        object.__setattr__(self, "lrs", tuple(float(x) for x in self.lrs))
        object.__setattr__(self, "seeds", tuple(self.seeds))
        if not self.lrs or any(not (math.isfinite(x) and x > 0) for x in self.lrs):
            raise ValueError(f"lrs must be a non-empty list of positive learning rates, got {self.lrs}")
        if len(set(self.lrs)) != len(self.lrs):
            raise ValueError(f"lrs has duplicates: {self.lrs}")
        if not self.seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be a non-empty list of integers >= 0, got {self.seeds}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds has duplicates: {self.seeds}")
        if not (isinstance(self.epochs, (int, float)) and self.epochs > 0 and math.isfinite(self.epochs)):
            raise ValueError(f"epochs must be > 0, got {self.epochs!r}")
        for name in ("batch_size", "eval_batch_size", "max_len", "calib_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            raise ValueError(f"max_steps must be an integer >= 1 or None, got {self.max_steps!r}")
        if not 0.0 <= self.warmup_frac < 1.0:
            raise ValueError(f"warmup_frac must be in [0, 1), got {self.warmup_frac!r}")
        if not self.weight_decay >= 0 or not self.grad_clip >= 0:
            raise ValueError("weight_decay and grad_clip must be >= 0")
        if self.save not in SAVE:
            raise ValueError(f"save must be one of {SAVE}, got {self.save!r}")


# ------------------------------------------------------------------------------------ loading
def _model_config(state: dict[str, Any], ckpt: Path) -> ModelConfig:
    try:
        return ModelConfig.from_dict(state["model_config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DSLMError(f"checkpoint {ckpt}: bad or missing model_config in state.json ({exc})") from None


def load_backbone(path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, ModelConfig, dict, Path]:
    """(pretrained backbone, its config, its state.json, checkpoint dir) from a checkpoint or run dir.

    Raises DSLMError for a fine-tuned checkpoint, an architecture without a fine-tuning head
    (encoder-decoder, ViT) or a tokenizer that is not byte-level.
    """
    from ..models import build_model

    c = ck.resolve_checkpoint(path)
    state = ck.read_state(c)
    if state.get("objective") == OBJECTIVE:
        raise DSLMError(f"checkpoint {c} is already fine-tuned (task {state.get('finetune', {}).get('task')!r}); "
                        "fine-tune from the pretrained checkpoint, or evaluate this one with --eval")
    mcfg = _model_config(state, c)
    if mcfg.arch not in ("encoder", "decoder"):
        raise DSLMError(f"checkpoint {c} holds a {mcfg.arch!r} model; the fine-tuning heads (sequence "
                        "classification, multiple choice, yes/no QA) need an 'encoder' (MLM) or 'decoder' backbone")
    tok_file = c / "tokenizer.json"
    if tok_file.is_file():
        from ..data.tokenizer import load_tokenizer

        kind = load_tokenizer(str(tok_file)).kind
        if kind != "byte":
            raise DSLMError(f"checkpoint {c} uses a {kind!r} tokenizer; fine-tuning encodes tasks as bytes and "
                            "needs a byte-level model")
    if mcfg.vocab_size < 256:
        raise DSLMError(f"checkpoint {c} has vocab_size {mcfg.vocab_size} < 256: not a byte-level model")
    torch.manual_seed(0)
    model = build_model(mcfg, device=device)
    model.load_state_dict(ck.load_model_state(c, model.state_dict()))
    return model, mcfg, state, c


def load_finetuned(path: str | Path, device: str = "cpu") -> tuple[FinetuneModel, dict[str, Any], Path]:
    """(fine-tuned model in eval mode, its ``finetune`` metadata, checkpoint dir)."""
    from ..models import build_model

    c = ck.resolve_checkpoint(path)
    state = ck.read_state(c)
    meta = state.get("finetune")
    if state.get("objective") != OBJECTIVE or not isinstance(meta, dict):
        raise DSLMError(f"checkpoint {c} is not a fine-tuned checkpoint (objective {state.get('objective')!r}); "
                        "fine-tune it first with `dslm finetune`")
    mcfg = _model_config(state, c)
    try:
        n_labels, kind = int(meta["n_labels"]), str(meta["kind"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DSLMError(f"checkpoint {c}: bad finetune section in state.json ({exc})") from None
    torch.manual_seed(0)
    model = FinetuneModel(build_model(mcfg, device=device), n_labels, kind).to(device)
    model.load_state_dict(ck.load_model_state(c, model.state_dict()))
    model.head_q = float(meta.get("head_q", 1.0))
    model.eval()
    return model, meta, c


def check_task_fits(task: TaskData, kind: str, n_labels: int, where: str) -> None:
    """Raise DSLMError unless the task needs exactly this head (kind and number of outputs)."""
    if task.kind != kind or task.n_labels != n_labels:
        what = "options" if kind == "multiple_choice" else "classes"
        raise DSLMError(f"{where}: the head is {kind} over {n_labels} {what}, but task {task.name!r} is "
                        f"{task.kind} with {task.n_labels} labels")


# ---------------------------------------------------------------------------------- training
def _lr_at(step: int, total: int, warmup: int, lr: float) -> float:
    """Linear warm-up from 0 to lr over `warmup` steps, then linear decay to 0 at `total` (1-based step):
    the package's `deepscalelm.train.optim.schedule` with ``decay="linear"`` and ``min_lr_ratio=0``."""
    return schedule(step, lr=lr, warmup_steps=warmup, max_steps=total, decay="linear", min_lr_ratio=0.0)


def _batches(arrays: dict[str, np.ndarray], idx: np.ndarray, device: torch.device, causal: bool
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids, lengths = arrays["ids"][idx], arrays["lengths"][idx]
    if causal:  # a causal model's pooled position never sees padding: trim to the batch's longest row
        ids = ids[:, :, : int(lengths.max())]
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
    return t(ids), t(lengths), t(arrays["labels"][idx])


@torch.no_grad()
def accuracy(model: FinetuneModel, arrays: dict[str, np.ndarray], batch_size: int = 64) -> float:
    """Fraction of examples whose argmax logit is the label (model in eval mode during the call)."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    n = len(arrays["labels"])
    correct = 0
    for s in range(0, n, batch_size):
        ids, lengths, labels = _batches(arrays, np.arange(s, min(n, s + batch_size)), device, model.causal)
        correct += int((model(ids, lengths).argmax(-1) == labels).sum())
    model.train(was)
    return correct / n


def clone_backbone(backbone: torch.nn.Module) -> torch.nn.Module:
    """A fresh copy of a backbone: same config, same scheme (so the same residual scaling), same weights."""
    from ..models import build_model

    device = next(backbone.parameters()).device
    src: Any = backbone  # a deepscalelm model: its ModelConfig and Scheme
    clone = build_model(src.config, scheme=src.scheme, device=device)
    clone.load_state_dict(backbone.state_dict())
    return clone


def train_one(backbone: torch.nn.Module, task: TaskData, data: dict[str, dict[str, np.ndarray]],
              lr: float, seed: int, cfg: FinetuneConfig, log: Callable[[str], None] | None = None
              ) -> tuple[FinetuneModel, dict[str, Any]]:
    """Fine-tune a copy of `backbone` once; returns (model, record with steps, losses, head_q).

    Messages go to `log` (default: this module's logger at INFO level).
    """
    log = log or logger.info
    device = next(backbone.parameters()).device
    train = data["train"]
    n = len(train["labels"])
    steps = math.ceil(cfg.epochs * n / cfg.batch_size)
    if cfg.max_steps is not None:
        steps = min(steps, cfg.max_steps)
    warmup = int(round(cfg.warmup_frac * steps))
    model = FinetuneModel(clone_backbone(backbone), task.n_labels, task.kind).to(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 0x5EED])
    calib = np.sort(rng.choice(n, size=min(n, cfg.calib_size), replace=False))
    q = model.init_head(*_batches(train, calib, device, model.causal)[:2])
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=lr, betas=(0.9, 0.999), eps=1e-8)
    need = steps * cfg.batch_size
    order = np.concatenate([rng.permutation(n) for _ in range(math.ceil(need / n))])[:need]
    model.train()
    losses: list[float] = []
    t0 = time.perf_counter()
    for s in range(1, steps + 1):
        for g in opt.param_groups:
            g["lr"] = _lr_at(s, steps, warmup, lr)
        ids, lengths, labels = _batches(train, order[(s - 1) * cfg.batch_size: s * cfg.batch_size], device,
                                        model.causal)
        loss = F.cross_entropy(model(ids, lengths).float(), labels)
        if not torch.isfinite(loss):
            raise DSLMError(f"non-finite loss at fine-tuning step {s} (task {task.name}, lr {lr:g}, seed {seed}): "
                            "lower the learning rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(loss.item())
    tail = losses[-max(1, len(losses) // 10):]
    rec = {"lr": lr, "seed": seed, "steps": steps, "warmup_steps": warmup, "head_q": q,
           "first_loss": losses[0], "final_loss": sum(tail) / len(tail),
           "seconds": round(time.perf_counter() - t0, 2)}
    return model, rec


def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
    return float(statistics.fmean(xs)), float(statistics.stdev(xs)) if len(xs) > 1 else 0.0


def _save_run(root: Path, model: FinetuneModel, rec: dict[str, Any], task: TaskData, cfg: FinetuneConfig,
              pre_state: dict[str, Any], pre_ckpt: Path) -> Path:
    meta = {
        "model_config": model.config.to_dict(), "train_config": pre_state.get("train_config"),
        "objective": OBJECTIVE, "world_size": 1,
        "finetune": {"task": task.name, "kind": task.kind, "n_labels": task.n_labels,
                     "label_names": task.label_names, "max_len": cfg.max_len, "truncate": task.truncate,
                     "pooling": "last" if model.causal else "first", "head_q": rec["head_q"],
                     "pretrained": str(pre_ckpt), "pretrained_step": pre_state.get("step"),
                     "config": asdict(cfg), **{k: rec[k] for k in ("lr", "seed", "steps", "dev_acc", "test_acc")}},
    }
    rng = {"rng.cpu.rank0": torch.get_rng_state()}
    return ck.save_checkpoint(root, rec["steps"], model_state=model.state_dict(),
                              optim_state={"state": {}, "param_groups": []},
                              rng_states={k[4:]: v for k, v in rng.items()}, meta=meta, keep=1)


def encode_task(task: TaskData, max_len: int, causal: bool) -> dict[str, dict[str, np.ndarray]]:
    """Encoded train/dev(/test) arrays (see `encode_split`); encoders get rows padded to max_len.

    Train and dev are required; test is optional (a task from the user's files without a test file).
    """
    for split in ("train", "dev"):
        if split not in task.splits or not task.splits[split]:
            raise DSLMError(f"task {task.name} has no {split} examples")
    splits = [s for s in ("train", "dev", "test") if task.splits.get(s)]
    return {s: encode_split(task.splits[s], task, max_len, pad_to_max=not causal) for s in splits}


def fit_max_len(cfg: FinetuneConfig, seq_len: int, log: Callable[[str], None]) -> FinetuneConfig:
    """`cfg` with ``max_len`` clamped to the checkpoint's ``seq_len`` (its position table), with a
    logged note when it had to be lowered."""
    if cfg.max_len <= seq_len:
        return cfg
    log(f"note: --max-len {cfg.max_len} exceeds the checkpoint's seq_len {seq_len}; using max_len {seq_len}")
    return replace(cfg, max_len=seq_len)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def finetune(checkpoint: str | Path, task: str | TaskData, out: str | Path | None = None,
             cfg: FinetuneConfig | None = None, *, data_dir: str | Path | None = None,
             subset: dict[str, int | None] | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Fine-tune `checkpoint` (path to a pretrained checkpoint or run directory) on `task` (a name of
    `deepscalelm.tasks.TASKS` read from `data_dir`, or a `TaskData`, e.g. the user's own files read by
    `deepscalelm.tasks.load_files`) with the grid of `cfg`. ``cfg.max_len`` above the checkpoint's
    ``seq_len`` is lowered to it (a logged note). A task without a test split is scored on dev only:
    ``test_mean``, ``test_std``, ``majority_test_acc`` and every run's ``test_acc`` are then None.

    ``subset`` cuts splits to seeded random subsets (e.g. ``{"train": 500, "dev": 200, "test": 500}``).
    Returns the results dict (also written to ``out/results.json`` when `out` is given): per-run dev
    and test accuracy, the chosen lr, test mean ± std over seeds, majority-class test accuracy.
    Messages go to `log` (default: this module's logger at INFO level).
    """
    cfg = cfg or FinetuneConfig()
    log = log or logger.info
    if out is not None:
        out = Path(out).expanduser()
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise DSLMError(f"output directory {out} exists and is not empty: choose another --out")
    if not isinstance(checkpoint, (str, Path)):
        raise ValueError("checkpoint must be a path to a pretrained checkpoint or run directory")
    backbone, mcfg, pre_state, pre_ckpt = load_backbone(checkpoint, cfg.device)
    asked = cfg.max_len
    cfg = fit_max_len(cfg, mcfg.seq_len, log)
    td = load_task(task, data_dir) if isinstance(task, str) else task
    if subset:
        td = td.subset(subset)
    for split, exs in td.splits.items():
        check_labels(exs, td.n_labels, td.kind, f"{td.name}/{split}")
    causal = mcfg.arch == "decoder"
    data = encode_task(td, cfg.max_len, causal)
    has_test = "test" in data
    majority = {s: float(np.bincount(data[s]["labels"], minlength=td.n_labels).max() / len(data[s]["labels"]))
                for s in ("dev", "test") if s in data}

    stage = None
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = out.parent / f".{out.name}.staging-{os.getpid()}-{time.time_ns()}"
        stage.mkdir()
    try:
        runs: list[dict[str, Any]] = []
        for lr in cfg.lrs:
            for seed in cfg.seeds:
                model, rec = train_one(backbone, td, data, lr, seed, cfg, log)
                rec["dev_acc"] = accuracy(model, data["dev"], cfg.eval_batch_size)
                rec["test_acc"] = accuracy(model, data["test"], cfg.eval_batch_size) if has_test else None
                log(f"{td.name} lr {lr:g} seed {seed}: {rec['steps']} steps, loss {rec['first_loss']:.3f} -> "
                    f"{rec['final_loss']:.3f}, dev {rec['dev_acc']:.4f}, test {_fmt(rec['test_acc'])} "
                    f"({rec['seconds']:.1f} s)")
                if stage is not None and cfg.save != "none":
                    rec["checkpoint"] = str(_save_run(stage / "runs" / f"lr-{lr:g}-seed-{seed}", model, rec, td,
                                                      cfg, pre_state, pre_ckpt).relative_to(stage))
                runs.append(rec)
        by_lr = {lr: [r for r in runs if r["lr"] == lr] for lr in cfg.lrs}
        dev_mean = {lr: _mean_std([r["dev_acc"] for r in rs])[0] for lr, rs in by_lr.items()}
        best = min(cfg.lrs, key=lambda lr: (-dev_mean[lr], lr))
        tm, ts = _mean_std([r["test_acc"] for r in by_lr[best]]) if has_test else (None, None)
        dm, ds = _mean_std([r["dev_acc"] for r in by_lr[best]])
        result = {
            "task": td.name, "kind": td.kind, "n_labels": td.n_labels,
            "note": td.note + (f"; max_len {asked} clamped to seq_len {cfg.max_len}" if asked != cfg.max_len else ""),
            "sizes": {s: len(v) for s, v in td.splits.items()},
            "pretrained": str(pre_ckpt), "arch": mcfg.arch, "n_layers": mcfg.n_layers, "d_model": mcfg.d_model,
            "scheme": mcfg.scheme, "norm": mcfg.norm, "config": asdict(cfg),
            "best_lr": best, "dev_mean": dm, "dev_std": ds, "test_mean": tm, "test_std": ts,
            "n_seeds": len(cfg.seeds), "majority_test_acc": majority.get("test"),
            "majority_dev_acc": majority["dev"], "runs": runs,
        }
        if stage is not None:
            if cfg.save == "best":
                for r in runs:
                    if r["lr"] != best and "checkpoint" in r:
                        shutil.rmtree(stage / "runs" / f"lr-{r['lr']:g}-seed-{r['seed']}", ignore_errors=True)
                        r.pop("checkpoint")
            ck.write_json_atomic(stage / "results.json", result)
            assert out is not None  # a staging directory is made for an output directory only
            if out.exists():
                out.rmdir()
            os.rename(stage, out)
            stage = None
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
    n = len(cfg.seeds)
    if tm is not None and ts is not None:  # the task has a test split
        log(f"{td.name}: best lr {best:g} (dev {mean_std_text(dm, ds, n)}); test {mean_std_text(tm, ts, n)}; "
            f"majority class {majority['test']:.4f}")
    else:
        log(f"{td.name}: best lr {best:g} (dev {mean_std_text(dm, ds, n)}; majority class "
            f"{majority['dev']:.4f}); no test split: the dev accuracy chose the lr and is optimistic")
    return result


def evaluate_checkpoint(path: str | Path, task: str | TaskData, split: str = "test", *,
                        data_dir: str | Path | None = None, batch_size: int = 64,
                        device: str = "cpu") -> dict[str, Any]:
    """Accuracy of a fine-tuned checkpoint on a task split; DSLMError if the head does not fit the task."""
    model, meta, c = load_finetuned(path, device)
    td = load_task(task, data_dir) if isinstance(task, str) else task
    check_task_fits(td, meta["kind"], int(meta["n_labels"]), f"checkpoint {c}")
    if split not in td.splits:
        raise ValueError(f"split must be one of {sorted(td.splits)}, got {split!r}")
    exs = td.splits[split]
    check_labels(exs, td.n_labels, td.kind, f"{td.name}/{split}")
    max_len = int(meta.get("max_len", model.config.seq_len))
    arrays = encode_split(exs, td, max_len, pad_to_max=not model.causal)
    return {"checkpoint": str(c), "task": td.name, "split": split, "n": len(exs),
            "accuracy": accuracy(model, arrays, batch_size)}


__all__ = ["FinetuneConfig", "finetune", "load_backbone", "load_finetuned", "evaluate_checkpoint", "accuracy",
           "train_one", "encode_task", "check_task_fits", "SAVE"]
