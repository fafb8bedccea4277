"""Checkpoints without pickle: safetensors for tensors, JSON for everything else, written atomically.

Layout of ``<run>/checkpoints/step-000100/``:

* ``model.safetensors``: the full (unsharded) model state dict, parameter names as in
  ``model.state_dict()`` of the unwrapped model.
* ``train_state.safetensors``: AdamW moments and step counts (``optim.<param name>.<key>``) and the
  torch RNG states (``rng.cpu.rank<r>``, ``rng.cuda.rank<r>``) of every process.
* ``state.json``: format version, step, both configs, optimizer hyper-parameters per group (with
  parameter names), the grad-scaler state, the data position and the SHA-256 of the two tensor files.

A checkpoint is written into ``checkpoints/.tmp-...`` and renamed into place when complete, so a run
killed at any moment leaves either the previous checkpoint or the new one, never a partial one.
Loading verifies hashes, names and shapes and raises `DSLMError` on any mismatch. Nothing is
unpickled: safetensors and JSON only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import DSLMError

FORMAT = "deepscalelm-checkpoint"
VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to `path` through a temporary file and an atomic rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _save_tensors(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(path))
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def save_checkpoint(run_dir: Path, step: int, *, model_state: Mapping[str, torch.Tensor],
                    optim_state: Mapping[str, Any], rng_states: Mapping[str, torch.Tensor],
                    meta: Mapping[str, Any], keep: int = 2, extra_files: list[Path] = ()) -> Path:
    """Write checkpoint `step` under ``run_dir/checkpoints`` atomically; prune to `keep` newest.

    `optim_state` is a torch optimizer state dict keyed by parameter names (as returned by
    `torch.distributed.checkpoint.state_dict.get_optimizer_state_dict`); `meta` must be JSON-able.
    `extra_files` (the tokenizer, run.json) are copied in so a checkpoint is self-contained.
    Returns the checkpoint directory.
    """
    ckpt_root = run_dir / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    tmp = ckpt_root / f".tmp-step-{step:07d}-{os.getpid()}-{time.time_ns()}"
    tmp.mkdir()
    try:
        _save_tensors(model_state, tmp / "model.safetensors")
        tensors: dict[str, torch.Tensor] = {}
        for name, st in optim_state["state"].items():
            for key, value in st.items():
                if not isinstance(value, torch.Tensor):
                    value = torch.tensor(value)
                tensors[f"optim.{name}.{key}"] = value
        for key, value in rng_states.items():
            tensors[f"rng.{key}"] = value
        _save_tensors(tensors, tmp / "train_state.safetensors")
        for f in extra_files:
            shutil.copyfile(f, tmp / Path(f).name)
        groups = []
        for g in optim_state["param_groups"]:
            groups.append({k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()})
        state = {
            "format": FORMAT, "version": VERSION, "step": step, **meta,
            "optimizer": {"param_groups": groups},
            "files": {f: _sha256(tmp / f) for f in ["model.safetensors", "train_state.safetensors"]
                  + [Path(e).name for e in extra_files]},
        }
        write_json_atomic(tmp / "state.json", state)
        return commit_checkpoint(tmp, step, keep)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def commit_checkpoint(tmp: Path, step: int, keep: int) -> Path:
    """Rename the complete checkpoint directory `tmp` (in ``checkpoints/``) to ``step-N``; prune.

    Returns the final directory. Used for full and sharded checkpoints alike.
    """
    ckpt_root = tmp.parent
    final = ckpt_root / f"step-{step:07d}"
    _fsync_dir(tmp)
    if final.exists():  # e.g. a run resumed from an older checkpoint passes this step again
        trash = ckpt_root / f".old-{final.name}-{os.getpid()}"
        final.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.rename(tmp, final)
    _fsync_dir(ckpt_root)
    prune(ckpt_root, keep)
    return final


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run as (step, dir), oldest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def prune(ckpt_root: Path, keep: int) -> None:
    """Delete all but the `keep` newest checkpoints and leftovers of interrupted writes."""
    for p in ckpt_root.iterdir():
        if p.name.startswith((".tmp-", ".old-")) and p.is_dir():
            # leftovers of a process killed mid-write (ours are renamed before we get here)
            if f"-{os.getpid()}-" not in p.name:
                shutil.rmtree(p, ignore_errors=True)
    ckpts = list_checkpoints(ckpt_root.parent)
    for _, p in ckpts[:-keep] if keep > 0 else []:
        shutil.rmtree(p, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1][1] if ckpts else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a checkpoint dir or a run dir (its newest checkpoint)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DSLMError(f"checkpoint path {p} does not exist")
    if (p / "state.json").is_file():
        return p
    latest = latest_checkpoint(p)
    if latest is None:
        raise DSLMError(f"{p} holds no checkpoint (expected state.json or checkpoints/step-*/)")
    return latest


def read_state(ckpt: Path) -> dict[str, Any]:
    """The checked ``state.json`` of a checkpoint (hashes of its tensor files verified)."""
    try:
        with open(ckpt / "state.json", encoding="utf-8") as fh:
            state = json.load(fh)
    except FileNotFoundError:
        raise DSLMError(f"checkpoint {ckpt} has no state.json: it is incomplete or not a checkpoint") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DSLMError(f"checkpoint {ckpt}: state.json is corrupt ({exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DSLMError(f"{ckpt} is not a deepscalelm checkpoint")
    if state.get("version") != VERSION:
        raise DSLMError(f"checkpoint {ckpt} has format version {state.get('version')}, this code reads {VERSION}")
    for name, digest in state.get("files", {}).items():
        f = ckpt / name
        if not f.is_file():
            raise DSLMError(f"checkpoint {ckpt} lacks {name}")
        if _sha256(f) != digest:
            raise DSLMError(f"checkpoint {ckpt}: {name} is corrupt or truncated (SHA-256 mismatch); "
                            "delete this checkpoint directory to fall back to an earlier one")
    return state


def _load(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise DSLMError(f"cannot read {path}: {exc}") from None


def load_model_state(ckpt: Path, expected: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Model tensors of a checkpoint, checked against `expected` names/shapes when given."""
    tensors = _load(ckpt / "model.safetensors")
    if expected is not None:
        missing = sorted(set(expected) - set(tensors))
        extra = sorted(set(tensors) - set(expected))
        bad = [f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(expected[k].shape)}"
               for k in sorted(set(tensors) & set(expected)) if tensors[k].shape != expected[k].shape]
        if missing or extra or bad:
            parts = []
            if missing:
                parts.append(f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}")
            if extra:
                parts.append(f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}")
            if bad:
                parts.append("shape mismatch " + "; ".join(bad[:5]))
            raise DSLMError(f"checkpoint {ckpt} does not fit this model (it was written for a different "
                            f"config): {', '.join(parts)}")
    return tensors


def load_train_state(ckpt: Path, state: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(optimizer state dict keyed by parameter names, RNG tensors) of a checkpoint."""
    tensors = _load(ckpt / "train_state.safetensors")
    optim: dict[str, Any] = {"state": {}, "param_groups": []}
    rng: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            name, sub = key[len("optim."):].rsplit(".", 1)
            optim["state"].setdefault(name, {})[sub] = value
        elif key.startswith("rng."):
            rng[key[4:]] = value
    for g in state["optimizer"]["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        optim["param_groups"].append(g)
    return optim, rng


# public names for the sharded (FSDP) checkpoints of `deepscalelm.train.sharded`
sha256 = _sha256
save_tensors = _save_tensors

__all__ = ["save_checkpoint", "list_checkpoints", "latest_checkpoint", "resolve_checkpoint", "read_state",
           "load_model_state", "load_train_state", "write_json_atomic", "commit_checkpoint", "sha256", "save_tensors"]
