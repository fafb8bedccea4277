"""FSDP2 training state: sharded models, sharded checkpoints and the export to one safetensors file.

* `build_sharded` builds the model on the meta device, shards every residual layer and then the
  root with ``torch.distributed.fsdp.fully_shard`` and only then materialises it, so each process
  allocates its own shards and nothing more (plus one full parameter at a time while the scheme's
  weights are drawn, see `deepscalelm.models.init`).
* `save_sharded` writes a checkpoint with ``torch.distributed.checkpoint`` (DCP): every rank writes
  its own shards of the model and of the AdamW moments into ``step-N/sharded/``; there is no gather
  onto one rank. Rank 0 adds ``rng.safetensors`` (the RNG states of all ranks), the run's
  ``run.json``/``tokenizer.json`` and ``state.json`` (``"layout": "sharded"``, the world size and the
  SHA-256 of every file), and renames the directory into place, as for full checkpoints. The
  directory must be on a file system all ranks share.
* `load_sharded` resumes such a checkpoint with the same number of processes; any other world size,
  or a run without FSDP, is refused with a message naming the world size to use.
* `export_model` turns any checkpoint (sharded or full) into one ``model.safetensors`` with the model
  config in its metadata, read back by `load_exported`; `read_model_weights` loads a sharded
  checkpoint into a plain model in one process (used by ``dslm sample``/``dslm eval``).

DCP keeps its index (``sharded/.metadata``) as a Python pickle; it is only read after the hashes in
``state.json`` match, but like any pickle it should come from a source you trust. The export holds
tensors and JSON only.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import DSLMError
from . import checkpoint as ck

LAYOUT = "sharded"
SHARDED_DIR = "sharded"
RNG_FILE = "rng.safetensors"
EXPORT_FORMAT = "deepscalelm-model"


# ------------------------------------------------------------------------------------ the model
def shard_layers(model: nn.Module, device_type: str) -> None:
    """``fully_shard`` each residual layer, then the root, over all processes (a 1-D mesh)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from .guard import residual_layers

    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    for _, layer in residual_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)


def build_sharded(config: ModelConfig, device: torch.device,
                  factory: Callable[[ModelConfig], nn.Module] | None = None,
                  activation_checkpointing: bool = False) -> nn.Module:
    """An FSDP2 model of `config` on `device` (call with the same RNG state on every rank).

    Without `factory` the model is built on the meta device and materialised per shard; a custom
    `factory` (any ``ModelConfig -> nn.Module``) builds the full model first, then shards it.
    """
    def prepare(model: nn.Module) -> None:
        if activation_checkpointing:
            if not hasattr(model, "set_activation_checkpointing"):
                raise DSLMError("this model does not support activation checkpointing")
            model.set_activation_checkpointing(True)  # type: ignore[operator]
        shard_layers(model, device.type)

    if factory is None:
        from ..models import build_model

        return build_model(config, device=device, on_meta=prepare)
    model = factory(config).to(device)
    prepare(model)
    return model


# ------------------------------------------------------------------------------------ checkpoints
def _files_under(root: Path) -> list[str]:
    """Paths of all files below `root`, relative to it, sorted."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def save_sharded(run_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, *,
                 rng_states: Mapping[str, torch.Tensor], meta: Mapping[str, Any], keep: int,
                 extra_files: list[Path], main: bool) -> Path | None:
    """Write checkpoint `step` of an FSDP2 model (collective: every rank calls it).

    Returns the checkpoint directory on rank 0, None elsewhere.
    """
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

    root = run_dir / "checkpoints"
    name: list[str | None] = [None]
    if main:
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".tmp-step-{step:07d}-{os.getpid()}-{time.time_ns()}"
        tmp.mkdir()
        name = [str(tmp)]
    dist.broadcast_object_list(name, src=0)
    tmp = Path(str(name[0]))
    try:
        msd, osd = get_state_dict(model, optimizer)
        dcp_save({"model": msd, "optim": osd}, checkpoint_id=str(tmp / SHARDED_DIR))
        if not main:
            return None
        ck.save_tensors(rng_states, tmp / RNG_FILE)
        for f in extra_files:
            shutil.copyfile(f, tmp / Path(f).name)
        files = [f"{SHARDED_DIR}/{f}" for f in _files_under(tmp / SHARDED_DIR)]
        files += [RNG_FILE] + [Path(e).name for e in extra_files]
        state = {"format": ck.FORMAT, "version": ck.VERSION, "step": step, **meta, "layout": LAYOUT,
                 "files": {f: ck.sha256(tmp / f) for f in files}}
        ck.write_json_atomic(tmp / "state.json", state)
        return ck.commit_checkpoint(tmp, step, keep)
    except BaseException:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def is_sharded(state: Mapping[str, Any]) -> bool:
    """Whether a checked ``state.json`` describes a sharded (FSDP) checkpoint."""
    return state.get("layout") == LAYOUT


def check_resumable(ckpt: Path, state: Mapping[str, Any], world: int, sharded: bool) -> None:
    """Refuse to resume a sharded checkpoint with another world size or without FSDP."""
    if not is_sharded(state):
        return
    n = state.get("world_size")
    how = f"torchrun --nproc_per_node {n} ... --fsdp (nodes x processes per node = {n})"
    if not sharded:
        raise DSLMError(f"checkpoint {ckpt} is sharded over {n} FSDP processes; resume it with {how}, "
                        "or export it (dslm export) for inference")
    if n != world:
        raise DSLMError(f"checkpoint {ckpt} is sharded over {n} processes but this run has {world}: "
                        f"sharded checkpoints resume only with the same world size; use {how}")


def _dcp_load(state: dict[str, Any], ckpt: Path, no_dist: bool) -> None:
    from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

    try:
        dcp_load(state, checkpoint_id=str(ckpt / SHARDED_DIR), no_dist=no_dist)
    except Exception as exc:  # DCP wraps per-rank failures in CheckpointException
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise DSLMError(f"cannot read the sharded checkpoint {ckpt} (it does not fit this model or is "
                        f"damaged): {first}") from None


def _load_rng(ckpt: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(ckpt / RNG_FILE))
    except (SafetensorError, OSError, ValueError) as exc:
        raise DSLMError(f"cannot read {ckpt / RNG_FILE}: {exc}") from None


def load_sharded(ckpt: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Load model and optimizer shards of `ckpt` in place (collective); returns the RNG tensors.

    Call `check_resumable` first. Missing or misshapen entries raise `DSLMError`.
    """
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    msd, osd = get_state_dict(model, optimizer)  # creates the AdamW moments (zero step, lr 0) if needed
    state: dict[str, Any] = {"model": msd, "optim": osd}
    _dcp_load(state, ckpt, no_dist=False)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return _load_rng(ckpt)


def read_model_weights(ckpt: Path, model: nn.Module) -> None:
    """Load the weights of sharded checkpoint `ckpt` into an unsharded `model`, in this process only."""
    import warnings

    sd = model.state_dict()
    with warnings.catch_warnings():  # DCP warns that it loads in a single process: that is the intent
        warnings.simplefilter("ignore", UserWarning)
        _dcp_load({"model": sd}, ckpt, no_dist=True)
    model.load_state_dict(sd)


# --------------------------------------------------------------------------------------- export
def export_model(path: str | Path, out_file: str | Path, factory: Callable[[ModelConfig], nn.Module] | None = None
                 ) -> Path:
    """Write the weights of a checkpoint (or a run's newest) to one safetensors file; returns its path.

    The file's metadata holds ``format`` (``deepscalelm-model``), ``model_config`` (JSON),
    ``objective`` and ``step``. Works for sharded and full checkpoints, in one process.
    """
    from safetensors.torch import save_file

    from .restore import load_for_inference

    out = Path(out_file).expanduser()
    if out.suffix != ".safetensors":
        raise ValueError(f"--out must name a .safetensors file, got {str(out)!r}")
    if out.is_dir():
        raise DSLMError(f"{out} is a directory; --out must name a file")
    model, mcfg, _tcfg, _tok, _ckpt, state = load_for_inference(path, "cpu", factory=factory)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": EXPORT_FORMAT, "model_config": json.dumps(mcfg.to_dict(), sort_keys=True),
            "objective": str(state.get("objective")), "step": str(state.get("step"))}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def load_exported(path: str | Path, device: str = "cpu") -> tuple[nn.Module, ModelConfig]:
    """(model in eval mode, its config) from a file written by `export_model`."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    from ..models import build_model

    p = Path(path).expanduser()
    try:
        with safe_open(str(p), framework="pt") as fh:
            meta = fh.metadata() or {}
        tensors = load_file(str(p), device=device)
    except (SafetensorError, OSError, ValueError) as exc:
        raise DSLMError(f"cannot read {p}: {exc}") from None
    if meta.get("format") != EXPORT_FORMAT:
        raise DSLMError(f"{p} is not a deepscalelm model export (metadata format {meta.get('format')!r})")
    try:
        mcfg = ModelConfig.from_dict(json.loads(meta["model_config"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise DSLMError(f"{p}: bad model_config in the metadata ({exc})") from None
    model = build_model(mcfg, device=device)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        raise DSLMError(f"{p} does not fit the model its metadata describes: {str(exc).splitlines()[0]}") from None
    return model.eval(), mcfg


__all__ = ["build_sharded", "shard_layers", "save_sharded", "load_sharded", "check_resumable", "is_sharded",
           "read_model_weights", "export_model", "load_exported", "LAYOUT"]
