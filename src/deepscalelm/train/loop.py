"""The training loop: AdamW, schedule, clipping, accumulation, mixed precision, DDP/FSDP, checkpoints.

Determinism: the global batch of step ``s`` depends only on ``(seed, s)`` and every process restores
model, optimizer, grad-scaler and RNG state from the checkpoint, so a resumed run repeats the losses
of an uninterrupted one bit for bit on CPU. Data parallelism splits each global batch into equal
contiguous row blocks per rank (and those into micro-batches), so the loss of ``torchrun
--nproc_per_node N`` equals the single-process loss with the same ``batch_size`` up to float
rounding (exactly, with dropout 0, for the mean over equal-sized blocks). With dropout the training
losses differ between process counts, since every rank draws its own dropout masks. Evaluation
covers the same global windows for any number of processes and all-reduces its sums, so
``val_loss`` agrees across process counts up to float rounding (see `evaluate`). With ``fsdp`` the
model is sharded with FSDP2 and checkpointed shard-wise (`deepscalelm.train.sharded`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..data.objectives import IGNORE, bits_per_byte, rows
from ..errors import DSLMError
from ..optim import param_groups as depth_param_groups
from . import checkpoint as ck
from .config import RESUMABLE_CHANGES, TrainConfig, config_diff
from .guard import NonFiniteError, divergence_check, locate_nonfinite, reference_loss
from .memory import check_memory
from .metrics import Metrics
from .optim import lr_at
from .run import RunData, check_out_dir, open_run, prepare_run, read_run, run_configs

ModelFactory = Callable[[ModelConfig], nn.Module]
logger = logging.getLogger(__name__)


def default_factory(config: ModelConfig) -> nn.Module:
    from ..models import build_model

    return build_model(config)


# ----------------------------------------------------------------------------------- environment
@dataclass
class Dist:
    """Process-group facts (world 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup_dist(device: str) -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise DSLMError(f"device {device!r} requested but CUDA is not available")
    if world <= 1:
        dev = torch.device(device if device.startswith("cuda") else "cuda") if use_cuda else torch.device("cpu")
        return Dist(device=dev)
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=dev if use_cuda else None)
    return Dist(rank, world, local, dev)


def _all_reduce_mean(x: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        import torch.distributed as dist

        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x = x / d.world
    return x


def _barrier(d: Dist) -> None:
    if d.enabled:
        import torch.distributed as dist

        dist.barrier()


def auto_threads(world: int = 1) -> int:
    """CPU threads per process: the cores not busy by the 1-minute load average, in [1, torch default].

    On a shared machine, more OpenMP threads than free cores make every step many times slower
    (threads spin-wait on each other), so an idle share is the better default.
    """
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    free = int(cores - load + 0.5) // max(1, world)
    return max(1, min(torch.get_num_threads(), free))


# ------------------------------------------------------------------------------------- the loss
def to_device(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device, non_blocking=True) for k, v in batch.items()}


def forward(model: nn.Module, objective: str, b: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits of a batch: [B, L, V] for token objectives, [B, n_classes] for images."""
    if objective == "span":
        return model(b["src"], b["tgt_in"])
    if objective == "image":
        return model(b["images"])
    return model(b["ids"])


def loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of cross-entropy in nats over non-ignored targets, number of such targets)."""
    flat = logits.reshape(-1, logits.shape[-1]).float()
    y = labels.reshape(-1)
    total = F.cross_entropy(flat, y, ignore_index=IGNORE, reduction="sum")
    return total, (y != IGNORE).sum()


def autocast_ctx(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision in ("bf16", "fp16") and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    if precision == "bf16" and device.type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise DSLMError("fp16 training needs a GPU (use bf16 or fp32 on CPU)")
    return precision


def _eval_chunks(batch: dict[str, np.ndarray], d: Dist, micro: int) -> Iterable[tuple[dict[str, np.ndarray], bool]]:
    """(micro-batch, counts) pairs of this rank's contiguous block of a global evaluation batch.

    Every rank yields the same number of chunks, ceil(ceil(n / world) / micro); a rank whose block
    is shorter gets a one-row stand-in with counts False (a forward pass FSDP needs, result unused).
    """
    n = len(batch["labels"])
    per = -(-n // d.world)
    lo, hi = min(n, d.rank * per), min(n, (d.rank + 1) * per)
    for j in range(0, per, micro):
        a, b = lo + j, min(hi, lo + j + micro)
        yield (rows(batch, a, b), True) if a < b else (rows(batch, 0, 1), False)


@torch.no_grad()
def evaluate(model: nn.Module, data: Any, objective: str, batch_size: int, device: torch.device,
             precision: str, max_batches: int | None, tokens_per_byte: float | None, *,
             dist: Dist | None = None, micro_batch_size: int | None = None) -> dict[str, float]:
    """``val_loss`` (mean nats per predicted token or image) with ``val_ppl`` and, for causal LMs with a
    known bytes-per-token ratio, ``val_bpb`` (bits per byte); image classifiers get ``val_acc``
    (fraction correct) instead of a perplexity.

    The evaluation set is the first `max_batches` global batches of `batch_size` windows of
    ``data.eval_batches`` (all when None), whatever the number of processes: each rank of `dist`
    evaluates a contiguous block of every batch's rows, in micro-batches of `micro_batch_size`
    (default `batch_size`), and the sums of loss, targets and correct predictions are all-reduced
    (float64), so 1 and N processes agree up to float rounding. Collective under torchrun: call on
    every rank.
    """
    d = dist or Dist(device=device)
    micro = micro_batch_size or batch_size
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)  # loss in nats, targets, correct predictions
    try:
        for nb in data.eval_batches(batch_size, max_batches):
            for chunk, counts in _eval_chunks(nb, d, micro):
                b = to_device(chunk, device)
                with autocast_ctx(precision, device):
                    logits = forward(model, objective, b)
                if not counts:
                    continue
                s, c = loss_sum(logits, b["labels"])
                sums[0] += float(s)
                sums[1] += int(c)
                if objective == "image":
                    sums[2] += int((logits.argmax(-1) == b["labels"]).sum())
    finally:
        model.train(was_training)
    if d.enabled:
        import torch.distributed as tdist

        reduced = sums.to(device)
        tdist.all_reduce(reduced, op=tdist.ReduceOp.SUM)
        sums = reduced.cpu()
    tot, cnt, correct = float(sums[0]), int(sums[1]), int(sums[2])
    if cnt == 0:
        raise DSLMError("evaluation split produced no targets")
    loss = tot / cnt
    if objective == "image":  # a classifier: no perplexity
        return {"val_loss": loss, "val_acc": correct / cnt}
    out = {"val_loss": loss, "val_ppl": math.exp(min(loss, 700.0))}
    if objective == "causal" and tokens_per_byte is not None:
        out["val_bpb"] = bits_per_byte(loss, tokens_per_byte)
    return out


@torch.no_grad()
def generate(model: nn.Module, prompt: list[int], n_new: int, seq_len: int, *, temperature: float = 1.0,
             top_k: int | None = None, seed: int = 0, device: torch.device | None = None) -> list[int]:
    """Sample `n_new` tokens after `prompt` from a causal LM (context cropped to the last seq_len)."""
    if not prompt:
        raise ValueError("the prompt must hold at least one token")
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    ids = torch.tensor([prompt], dtype=torch.long, device=device)
    try:
        for _ in range(n_new):
            logits = model(ids[:, -seq_len:])[0, -1].float()
            if not torch.isfinite(logits).all():
                raise DSLMError("the model produced non-finite logits while sampling (diverged weights?)")
            if temperature <= 0:
                nxt = logits.argmax().view(1)
            else:
                logits = logits / temperature
                if top_k is not None and top_k < logits.numel():
                    kth = torch.topk(logits, top_k).values[-1]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    finally:
        model.train(was_training)
    return ids[0, len(prompt):].tolist()


# --------------------------------------------------------------------------------- state dicts
def _param_order(raw: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    names = {id(p): n for n, p in raw.named_parameters()}
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]


def gather_state(raw: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Full model and optimizer state dicts of a plain or DDP model, keyed by parameter names.

    (FSDP models are saved shard-wise instead, see `deepscalelm.train.sharded`.)
    """
    order = _param_order(raw, optimizer)
    osd = optimizer.state_dict()
    state = {order[i]: v for i, v in osd["state"].items()}
    groups = [{**g, "params": [order[i] for i in g["params"]]} for g in osd["param_groups"]]
    return dict(raw.state_dict()), {"state": state, "param_groups": groups}


def restore_state(model: nn.Module, raw: nn.Module, optimizer: torch.optim.Optimizer, msd: dict, osd: dict,
                  sharded: bool) -> None:
    """Inverse of `gather_state`; raises DSLMError when the optimizer state does not fit the model.

    With `sharded`, full state dicts (a checkpoint of a single-process run) are loaded into an FSDP model.
    """
    if sharded:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, strict=True)
        set_model_state_dict(model, msd, options=opts)
        set_optimizer_state_dict(model, optimizer, osd, options=opts)
        return
    raw.load_state_dict(msd)
    order = _param_order(raw, optimizer)
    index = {n: i for i, n in enumerate(order)}
    groups = osd["param_groups"]
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in optimizer.param_groups] or \
            any(n not in index for g in groups for n in g["params"]) or \
            any(n not in index for n in osd["state"]):
        raise DSLMError("the checkpoint's optimizer state does not match this model's parameters "
                        "(different config or weight-decay grouping)")
    optimizer.load_state_dict({
        "state": {index[n]: v for n, v in osd["state"].items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in groups],
    })


def _rng_tensors(d: Dist) -> dict[str, torch.Tensor]:
    """RNG states of all ranks (collective under torchrun)."""
    local = {"cpu": torch.get_rng_state()}
    if d.device.type == "cuda":
        local["cuda"] = torch.cuda.get_rng_state(d.device)
    if not d.enabled:
        return {f"{k}.rank0": v for k, v in local.items()}
    import torch.distributed as dist

    out = {}
    for k, v in local.items():
        t = v.to(d.device) if d.device.type == "cuda" else v.clone()
        parts = [torch.empty_like(t) for _ in range(d.world)]
        dist.all_gather(parts, t)
        out.update({f"{k}.rank{r}": p.cpu() for r, p in enumerate(parts)})
    return out


# ------------------------------------------------------------------------------------- training
def _is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is an interactive terminal (False for files, pipes and streams without isatty)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _duration(seconds: float) -> str:
    """``42 s``, ``3.5 min`` or ``2.1 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass
class TrainResult:
    """``tokens_per_s`` counts `unit` per second: tokens, or images for a ViT."""

    steps: int
    seconds: float
    tokens_per_s: float
    final: dict[str, float]
    sample: str | None
    run_dir: Path
    checkpoint: Path | None
    unit: str = "tokens"


def _resolve_resume(out: Path, train: TrainConfig, model: ModelConfig | None,
                    explicit: bool) -> tuple[ModelConfig, TrainConfig]:
    """Configs for a resumed run: the stored ones, with only resumable changes allowed."""
    stored_m, stored_t = run_configs(out)
    if not explicit:
        return stored_m, stored_t
    if model is not None:
        # vocab_size/same_token_prob are filled in from the data at preparation time
        mine = {k: v for k, v in model.to_dict().items() if k not in ("vocab_size", "same_token_prob")}
        theirs = {k: v for k, v in stored_m.to_dict().items() if k not in ("vocab_size", "same_token_prob")}
        diff = config_diff(theirs, mine)
        if diff:
            raise DSLMError(f"--resume: the model config differs from the run in {out}: " + "; ".join(diff))
    tdiff = [k for k, v in train.to_dict().items() if stored_t.to_dict()[k] != v and k not in RESUMABLE_CHANGES]
    if tdiff:
        raise DSLMError(f"--resume: the training config differs from the run in {out}: " +
                        "; ".join(config_diff({k: stored_t.to_dict()[k] for k in tdiff},
                                              {k: train.to_dict()[k] for k in tdiff})))
    allowed = {k: v for k, v in train.to_dict().items() if k in RESUMABLE_CHANGES and k != "data"}
    return stored_m, stored_t.replace(**allowed)


@dataclass
class _Setup:
    """How far `_train` got: a new run directory is removed when setup fails after it was prepared."""

    prepared: bool = False
    started: bool = False


def _discard_new_run(out: Path, was_empty_dir: bool) -> None:
    """Remove a run directory prepared by a call whose setup then failed (so a retry is not blocked)."""
    import shutil

    trash = out.with_name(f".{out.name}.discard-{os.getpid()}")
    try:
        out.rename(trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)
    if was_empty_dir:
        out.mkdir(exist_ok=True)


def _block_summary(mcfg: ModelConfig) -> str:
    """``"pre-LN"`` / ``"post-LN"`` for the paper's blocks, plus the non-default block options
    (e.g. ``"pre-RMSNorm, swiglu, rope, 2 kv heads"``)."""
    parts = [f"{mcfg.norm}-{'RMSNorm' if mcfg.norm_type == 'rmsnorm' else 'LN'}"]
    if mcfg.activation in ("silu", "swiglu", "geglu"):
        parts.append(mcfg.activation)
    if mcfg.position != "learned":
        parts.append(f"{mcfg.position} positions" if mcfg.position == "none" else "rope")
    if mcfg.kv_heads != mcfg.n_heads:
        parts.append(f"{mcfg.kv_heads} kv heads")
    if mcfg.qk_norm is not None:
        parts.append(f"qk-{mcfg.qk_norm}")
    return ", ".join(parts)


def train(out: str | Path, model_config: ModelConfig, train_config: TrainConfig, *, resume: bool = False,
          explicit_config: bool = True, factory: ModelFactory | None = None, progress: bool = True,
          log: Callable[[str], None] | None = None,
          callbacks: Iterable[Callable[[int, dict[str, Any]], None]] = ()) -> TrainResult:
    """Train (or resume) the run in `out`; returns a summary.

    `callbacks` are called as ``cb(step, record)`` after every optimizer step (used by tests to kill
    the process mid-run). `explicit_config` says whether the caller chose the configs (then they must
    match a resumed run) or just wants the stored ones. Progress messages go to `log` (default: the
    ``deepscalelm.train.loop`` logger at INFO level), on rank 0 only.

    Before anything is written, the memory the run needs is estimated (`memory.check_memory`) and
    the output directory is checked for writability. A new run directory whose setup fails after it
    was prepared (the model does not build, out of memory, ...) is removed again; running out of
    memory during setup raises DSLMError.
    """
    user_log, log = log, log or logger.info
    out = Path(out)
    setup = _Setup()
    was_empty_dir = not resume and out.is_dir() and not any(out.iterdir())
    try:
        return _train(out, model_config, train_config, setup, resume=resume, explicit_config=explicit_config,
                      factory=factory, progress=progress, log=log, user_log=user_log, callbacks=callbacks)
    except BaseException as exc:
        if setup.prepared and not setup.started and int(os.environ.get("RANK", "0")) == 0:
            _discard_new_run(out, was_empty_dir)
        if not setup.started and isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
            raise DSLMError(f"out of memory while setting up the model ({type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:200]}): reduce n_layers, d_model or the batch size"
                            ) from None
        raise


def _train(out: Path, model_config: ModelConfig, train_config: TrainConfig, setup: _Setup, *, resume: bool,
           explicit_config: bool, factory: ModelFactory | None, progress: bool, log: Callable[[str], None],
           user_log: Callable[[str], None] | None,
           callbacks: Iterable[Callable[[int, dict[str, Any]], None]]) -> TrainResult:
    factory = factory or default_factory
    d = setup_dist(train_config.device)
    quiet = (lambda *_a, **_k: None)
    say = log if d.main else quiet
    if resume:
        check_out_dir(out, resume=True)
        model_config, train_config = _resolve_resume(out, train_config, model_config, explicit_config)
    elif train_config.threads == 0 and d.device.type == "cpu":
        train_config = train_config.replace(threads=auto_threads(d.world))
    if d.device.type == "cpu" and train_config.threads:
        torch.set_num_threads(train_config.threads)
    # checks that need no data come first: bad input must not leave a half-made run directory
    precision = resolve_precision(train_config.precision, d.device)
    per_rank, rem = divmod(train_config.batch_size, d.world)
    if rem:
        raise DSLMError(f"batch_size {train_config.batch_size} is not divisible by the {d.world} processes")
    micro = train_config.micro_batch_size or per_rank
    if per_rank % micro:
        raise DSLMError(f"per-process batch {per_rank} is not divisible by micro_batch_size {micro}")
    accum = per_rank // micro
    check_memory(model_config, micro, device_type=d.device.type, device_index=d.device.index,
                 checkpointing=train_config.activation_checkpointing,
                 shards=d.world if train_config.fsdp else 1,
                 processes_per_host=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if train_config.wandb and d.main:
        from .metrics import require_wandb

        require_wandb()
    if not resume and d.main:
        check_out_dir(out, resume=False)
        prepare_run(out, model_config, train_config, log=user_log)  # None: run.py's own logger
        setup.prepared = True
    _barrier(d)
    rd: RunData = open_run(out, train_config)
    mcfg, tcfg, objective = rd.model_config, rd.train_config, rd.objective
    if tcfg.sample_prompt is None:  # chosen from the data when the run was created (run.json)
        tcfg = tcfg.replace(sample_prompt=read_run(out)["train"].get("sample_prompt") or "")
    device = d.device
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)

    # ---- model (same init on every rank), then per-rank dropout RNG
    torch.manual_seed(tcfg.seed)
    sharded = d.enabled and tcfg.fsdp
    if sharded:  # FSDP2: built on the meta device, materialised per shard (the same weights as unsharded)
        from .sharded import build_sharded

        raw = build_sharded(mcfg, device, None if factory is default_factory else factory,
                            tcfg.activation_checkpointing)
    else:
        raw = factory(mcfg).to(device)
        if tcfg.activation_checkpointing:
            if not hasattr(raw, "set_activation_checkpointing"):
                raise DSLMError("this model does not support activation checkpointing")
            raw.set_activation_checkpointing(True)  # type: ignore[operator]  # present: checked just above
    model: nn.Module = raw
    if d.enabled and not sharded:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(raw, device_ids=[device.index] if device.type == "cuda" else None)
    elif tcfg.fsdp and not d.enabled:
        say("note: --fsdp has no effect in a single process (run under torchrun)")
    n_params = sum(p.numel() for p in raw.parameters())
    optimizer = torch.optim.AdamW(depth_param_groups(raw, tcfg.lr, tcfg.parametrization,
                                                     weight_decay=tcfg.weight_decay, eps=tcfg.eps),
                                  lr=tcfg.lr, betas=(tcfg.beta1, tcfg.beta2), eps=tcfg.eps)
    scaler = torch.amp.GradScaler("cuda", enabled=(precision == "fp16"))
    step = 0
    if resume:
        ckpt = ck.latest_checkpoint(out)
        if ckpt is None:
            say(f"resume: {out} has no checkpoint yet; starting from step 0")
        else:
            state = ck.read_state(ckpt)
            if state.get("model_config") != mcfg.to_dict():
                raise DSLMError(f"checkpoint {ckpt} was written for a different model config: "
                                + "; ".join(config_diff(state.get("model_config") or {}, mcfg.to_dict())))
            from .sharded import check_resumable, is_sharded, load_sharded

            check_resumable(ckpt, state, d.world, sharded)
            ck.verify_data_meta(ckpt, state, out / "data")
            if is_sharded(state):
                rng = load_sharded(ckpt, model, optimizer)
            else:
                expected = raw.state_dict()
                msd = ck.load_model_state(ckpt, expected)
                osd, rng = ck.load_train_state(ckpt, state, {n: tuple(v.shape) for n, v in expected.items()})
                restore_state(model, raw, optimizer, msd, osd, sharded)
            if state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            step = int(state["step"])
            key = f"cpu.rank{d.rank}"
            if key in rng and state.get("world_size") == d.world:
                torch.set_rng_state(rng[key])
                if device.type == "cuda" and f"cuda.rank{d.rank}" in rng:
                    torch.cuda.set_rng_state(rng[f"cuda.rank{d.rank}"], device)
            else:
                say(f"resume: checkpoint from {state.get('world_size')} processes, now {d.world}: "
                    "dropout RNG re-seeded (losses will not repeat bit-exactly)")
                torch.manual_seed(tcfg.seed + 1 + d.rank + step)
            say(f"resumed from {ckpt} at step {step}")
    if step == 0:
        torch.manual_seed(tcfg.seed + 1 + d.rank)
    fwd_model: nn.Module = torch.compile(model) if tcfg.compile else model  # type: ignore[assignment]  # a Module

    metrics = Metrics(out, d.main, step if resume else None,
                      wandb_project=tcfg.wandb_project if tcfg.wandb else None,
                      config={"model": mcfg.to_dict(), "train": tcfg.to_dict(), "world_size": d.world})
    tokens_per_step = tcfg.batch_size * (mcfg.seq_len if objective != "image" else 1)
    unit = "images" if objective == "image" else "tokens"
    say(f"model: {mcfg.arch}, {mcfg.n_layers} layers, d_model {mcfg.d_model}, {_block_summary(mcfg)}, "
        f"scheme {mcfg.scheme}, "
        f"{n_params / 1e6:.2f}M parameters; device {device}"
        f"{f' ({torch.get_num_threads()} threads)' if device.type == 'cpu' else ''}, {precision}, "
        f"{d.world} process(es), "
        f"batch {tcfg.batch_size} = {d.world} x {accum} x {micro}")

    def save(at: int, health_args: dict[str, Any]) -> tuple[Path | None, dict[str, Any] | None]:
        rng_t = _rng_tensors(d)
        path = None
        local = all(bool(torch.isfinite(q.to_local() if hasattr(q, "to_local") else q).all())
                    for q in raw.parameters() if q.is_floating_point())
        finite = local if not d.enabled else float(_all_reduce_mean(
            torch.tensor(1.0 if local else 0.0, device=device), d)) == 1.0
        health = divergence_check(**health_args, weights_finite=finite)
        meta = {"model_config": mcfg.to_dict(), "train_config": tcfg.to_dict(), "objective": objective,
                "world_size": d.world, "data_position": {"next_step": at + 1, "seed": tcfg.seed},
                "scaler": scaler.state_dict() if scaler.is_enabled() else None, "health": health}
        extra = [out / "run.json"] + ([out / "tokenizer.json"] if rd.tokenizer is not None else [])
        extra += [out / "data" / "meta.json"] if (out / "data" / "meta.json").is_file() else []
        if sharded:
            from .sharded import save_sharded

            path = save_sharded(out, at, model, optimizer, rng_states=rng_t, meta=meta,
                                keep=tcfg.keep_checkpoints, extra_files=extra, main=d.main)
        elif d.main:
            msd, osd = gather_state(raw, optimizer)
            path = ck.save_checkpoint(out, at, model_state=msd, optim_state=osd, rng_states=rng_t, meta=meta,
                                      keep=tcfg.keep_checkpoints, extra_files=extra)
        _barrier(d)
        return path, health

    def run_eval(max_batches: int | None) -> dict[str, float]:
        return evaluate(model, rd.val, objective, tcfg.batch_size, device, precision, max_batches,
                        rd.val_tokens_per_byte, dist=d, micro_batch_size=micro)

    bar = None
    # a progress bar on a terminal; elsewhere (a log file, CI) a plain line every log_interval steps
    plain_log = progress and d.main and not _is_terminal(sys.stderr)
    if progress and d.main and step < tcfg.max_steps and not plain_log:
        from tqdm.auto import tqdm

        bar = tqdm(total=tcfg.max_steps, initial=step, unit="step", dynamic_ncols=True, desc="train")
    model.train()
    t0 = time.perf_counter()
    start_step = step
    last_ckpt = ck.latest_checkpoint(out)
    last_good = ck.latest_healthy(out)  # newest checkpoint that passed the divergence check
    n_out = mcfg.n_classes if objective == "image" else mcfg.vocab_size
    ref = (ck.health_of(last_ckpt) or {}).get("reference") if last_ckpt else None
    ref = ref if isinstance(ref, (int, float)) else None
    window: list[float] = []  # training losses since the previous checkpoint
    skips = 0  # consecutive skipped steps
    last_eval: dict[str, float] = {}
    eval_step = -1

    def kept() -> str:
        if last_good:
            return f"last good checkpoint (passed the divergence check): {last_good}"
        if last_ckpt:
            return f"no checkpoint passed the divergence check (newest: {last_ckpt})"
        return "no checkpoint was written yet"

    setup.started = True
    try:
        while step < tcfg.max_steps:
            s = step + 1
            lr = lr_at(s, tcfg)
            for g in optimizer.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
            global_batch = rd.train.batch(s, tcfg.batch_size)
            mine = rows(global_batch, d.rank * per_rank, (d.rank + 1) * per_rank)
            loss_acc = torch.zeros((), device=device)
            for m in range(accum):
                b = to_device(rows(mine, m * micro, (m + 1) * micro), device)
                sync = (m == accum - 1) or not isinstance(model, nn.parallel.DistributedDataParallel)
                ctx = contextlib.nullcontext() if sync else model.no_sync()  # type: ignore[operator]  # DDP here
                with ctx:
                    with autocast_ctx(precision, device):
                        logits = forward(fwd_model, objective, b)
                    tot, cnt = loss_sum(logits, b["labels"])
                    loss = tot / cnt.clamp(min=1)
                    scaler.scale(loss / accum).backward()
                loss_acc += loss.detach() / accum
            loss_val = _all_reduce_mean(loss_acc, d)
            scaler.unscale_(optimizer)
            gnorm_t = torch.nn.utils.clip_grad_norm_(raw.parameters() if not d.enabled else model.parameters(),
                                                     tcfg.grad_clip if tcfg.grad_clip > 0 else float("inf"))
            gnorm = float(gnorm_t.full_tensor() if hasattr(gnorm_t, "full_tensor") else gnorm_t)
            loss_f = float(loss_val)
            bad = not math.isfinite(loss_f) or (not scaler.is_enabled() and not math.isfinite(gnorm))
            if bad:
                what = "loss" if not math.isfinite(loss_f) else "gradient norm"
                skips += 1
                if tcfg.on_nan == "skip" and skips > tcfg.max_nan_skips:
                    raise NonFiniteError(f"non-finite {what} at step {s} after {skips - 1} consecutive skipped "
                                         f"steps (max_nan_skips={tcfg.max_nan_skips}): the run does not recover; "
                                         f"{kept()}. Lower the learning rate or change the scheme")
                if tcfg.on_nan == "skip":
                    optimizer.zero_grad(set_to_none=True)
                    step = s
                    rec = {"step": s, "skipped": True, "loss": loss_f if math.isfinite(loss_f) else None}
                    metrics.log(rec)
                    (bar.write if bar is not None else say)(
                        f"step {s}: non-finite {what}; step skipped (--on-nan skip)")
                    if bar is not None:
                        bar.update(1)
                    for cb in callbacks:
                        cb(step, rec)
                    continue
                b0 = to_device(rows(mine, 0, micro), device)
                # the re-run would need every rank in lockstep: FSDP runs skip the layer search
                where = "layer not located under FSDP" if sharded else \
                    locate_nonfinite(raw, lambda: forward(raw, objective, b0))  # noqa: B023 (run at once, then raise)
                raise NonFiniteError(f"non-finite {what} at step {s} (loss {loss_f}, grad norm {gnorm}); {where}; "
                                     f"{kept()}. Lower the learning rate, use --on-nan skip, or change the scheme")
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step = s
            skips = 0
            ref = reference_loss(loss_f, n_out) if ref is None else ref
            window = window[-99:] + [loss_f]
            elapsed = time.perf_counter() - t0
            tps = (step - start_step) * tokens_per_step / max(elapsed, 1e-9)
            rec = {"step": step, "loss": loss_f, "lr": lr, "grad_norm": gnorm, unit: step * tokens_per_step,
                   f"{unit}_per_s": round(tps, 1), "time_s": round(elapsed, 3)}
            metrics.log(rec)
            at_log = step % tcfg.log_interval == 0 or step == tcfg.max_steps
            if bar is not None:
                bar.update(1)
                if at_log:
                    rate = {"tok_s" if unit == "tokens" else "img_s": f"{tps:,.0f}"}
                    bar.set_postfix(loss=f"{loss_f:.4f}", **rate, lr=f"{lr:.2e}", refresh=False)
            elif plain_log and at_log:
                eta = (tcfg.max_steps - step) * elapsed / max(step - start_step, 1)
                say(f"step {step}/{tcfg.max_steps}: loss {loss_f:.4f}, {tps:,.0f} {unit}/s, lr {lr:.2e}, "
                    f"ETA {_duration(eta)}")
            if step % tcfg.eval_interval == 0 or step == tcfg.max_steps:
                last_eval, eval_step = run_eval(tcfg.eval_batches), step
                metrics.log({"step": step, **last_eval})
                msg = " ".join(f"{k} {v:.4f}" for k, v in last_eval.items())
                (bar.write if bar is not None else say)(f"step {step}: {msg}")
            if step % tcfg.ckpt_interval == 0 or step == tcfg.max_steps:
                val = last_eval.get("val_loss") if eval_step == step else None
                path, health = save(step, {"train_losses": window, "val_loss": val,
                                           "reference": ref if ref is not None else reference_loss(None, n_out)})
                window = []
                last_ckpt = path or last_ckpt
                if path is not None and health is not None:
                    if health["ok"]:
                        last_good = path
                    else:
                        (bar.write if bar is not None else say)(
                            f"checkpoint {path.name} failed the divergence check ({health['reason']}); "
                            + (f"{last_good.name} is kept as the last good one" if last_good else
                               "no earlier checkpoint passed it"))
            for cb in callbacks:
                cb(step, rec)
    finally:
        if bar is not None:
            bar.close()
        metrics.close()
    seconds = time.perf_counter() - t0
    tps = (step - start_step) * tokens_per_step / max(seconds, 1e-9)
    if not last_eval:
        last_eval = run_eval(tcfg.eval_batches)
    sample = None
    # an FSDP forward is collective: then every rank samples (the same tokens), else rank 0 alone
    if objective == "causal" and rd.tokenizer is not None and tcfg.sample_tokens > 0 and (d.main or sharded):
        assert tcfg.sample_prompt is not None  # filled in from run.json at the start
        prompt = rd.tokenizer.encode(tcfg.sample_prompt) or [0]
        ids = generate(model if sharded else raw, prompt, tcfg.sample_tokens, mcfg.seq_len,
                       temperature=tcfg.temperature, top_k=tcfg.top_k, seed=tcfg.seed, device=device)
        sample = tcfg.sample_prompt + rd.tokenizer.decode(ids) if d.main else None
    result = TrainResult(step, seconds, tps, last_eval, sample, out, ck.latest_checkpoint(out), unit)
    if d.main:
        ck.write_json_atomic(out / "summary.json", {
            "steps": step, "seconds_this_session": round(seconds, 2), f"{unit}_per_s": round(tps, 1),
            "n_params": n_params, **last_eval, "sample": sample,
            "checkpoint": str(result.checkpoint) if result.checkpoint else None})
    _barrier(d)
    return result


__all__ = ["train", "evaluate", "generate", "forward", "loss_sum", "TrainResult", "setup_dist", "Dist",
           "default_factory"]
