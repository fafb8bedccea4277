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
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

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
                    meta: Mapping[str, Any], keep: int = 2, extra_files: Sequence[Path] = ()) -> Path:
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
            "optimizer": {"param_groups": groups,
                          "state_keys": {n: sorted(st) for n, st in optim_state["state"].items()}},
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
        _remove_dir(final)
    os.rename(tmp, final)
    _fsync_dir(ckpt_root)
    prune(ckpt_root, keep)
    return final


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (``step-*`` directories holding ``state.json``) of a run as (step, dir), oldest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / "state.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def _remove_dir(path: Path) -> None:
    """Delete a directory so that a kill at any moment leaves no half-deleted ``step-*`` behind.

    The directory is first renamed to a hidden ``.old-...`` name (atomic), then deleted; an
    interrupted deletion leaves only a hidden leftover, which the next `prune` removes.
    """
    trash = path.with_name(f".old-{path.name}-{os.getpid()}-{time.time_ns()}")
    try:
        path.rename(trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def health_of(ckpt: Path) -> dict[str, Any] | None:
    """The divergence-check record (``health`` in ``state.json``) of a checkpoint, or None."""
    try:
        with open(ckpt / "state.json", encoding="utf-8") as fh:
            health = json.load(fh).get("health")
    except (OSError, ValueError, AttributeError):
        return None
    return health if isinstance(health, dict) else None


def _is_healthy(ckpt: Path) -> bool:
    return (health_of(ckpt) or {}).get("ok") is True


def latest_healthy(run_dir: Path) -> Path | None:
    """The newest checkpoint whose ``state.json`` records a passed divergence check (``health.ok``)."""
    for _, p in reversed(list_checkpoints(run_dir)):
        if _is_healthy(p):
            return p
    return None


def prune(ckpt_root: Path, keep: int) -> None:
    """Delete all but the `keep` newest checkpoints, leftovers of interrupted writes and deletions,
    and ``step-*`` directories without ``state.json``; the newest checkpoint that passed the
    divergence check (see `latest_healthy`) is kept as well, however old."""
    for p in ckpt_root.iterdir():
        if p.name.startswith((".tmp-", ".old-")) and p.is_dir():
            # leftovers of a process killed mid-write (ours are renamed before we get here)
            if f"-{os.getpid()}-" not in p.name:
                shutil.rmtree(p, ignore_errors=True)
        elif _STEP_DIR.match(p.name) and p.is_dir() and not (p / "state.json").exists():
            _remove_dir(p)  # e.g. left by an older version killed while deleting in place
    ckpts = list_checkpoints(ckpt_root.parent)
    good = latest_healthy(ckpt_root.parent)
    for _, p in ckpts[:-keep] if keep > 0 else []:
        if p != good:
            _remove_dir(p)


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


def _bad(ckpt: Path, what: str) -> DSLMError:
    return DSLMError(f"checkpoint {ckpt}: state.json: {what}")


def _check_group(ckpt: Path, i: int, g: Any) -> None:
    where = f"optimizer.param_groups[{i}]"
    if not isinstance(g, dict):
        raise _bad(ckpt, f"{where} must be an object, got {type(g).__name__}")
    params = g.get("params")
    if not isinstance(params, list) or not all(isinstance(n, str) for n in params):
        raise _bad(ckpt, f"{where}.params must be a list of parameter names")
    for key, value in g.items():
        if key == "betas":
            if not (isinstance(value, list) and len(value) == 2
                    and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in value)):
                raise _bad(ckpt, f"{where}.betas must be a list of two numbers, got {value!r}")
        elif key in ("lr", "eps", "weight_decay", "initial_lr") and (
                isinstance(value, bool) or not isinstance(value, (int, float))):
            raise _bad(ckpt, f"{where}.{key} must be a number, got {value!r}")


def check_state(ckpt: Path, state: Any) -> None:
    """Raise DSLMError naming ``state.json`` and the field unless `state` has the expected types.

    Fields: ``step`` (int >= 0), ``files`` (name -> hex digest), ``model_config``/``train_config``
    (objects), ``optimizer.param_groups`` (list of objects with a ``params`` list of names),
    ``world_size`` (int >= 1, optional), ``scaler`` (object or null, optional).
    """
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DSLMError(f"{ckpt} is not a deepscalelm checkpoint")
    if state.get("version") != VERSION:
        raise DSLMError(f"checkpoint {ckpt} has format version {state.get('version')!r}, this code reads {VERSION}")
    step = state.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise _bad(ckpt, f"'step' must be an integer >= 0, got {step!r}")
    files = state.get("files")
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise _bad(ckpt, f"'files' must be an object of file name -> SHA-256, got {type(files).__name__}")
    for name in files:
        parts = PurePosixPath(name).parts  # a file of the checkpoint or of its sharded/ folder
        if not parts or name.startswith("/") or "\\" in name or any(s in (".", "..") for s in parts):
            raise _bad(ckpt, f"'files' may only name files inside the checkpoint, got {name!r}")
    for key in ("model_config", "train_config"):
        if not isinstance(state.get(key), dict):
            raise _bad(ckpt, f"{key!r} must be an object, got {type(state.get(key)).__name__}")
    if state.get("layout") != "sharded":  # sharded: the optimizer lives in sharded/ (checked by DCP on load)
        _check_optimizer_fields(ckpt, state.get("optimizer"))
    world = state.get("world_size", 1)
    if not isinstance(world, int) or isinstance(world, bool) or world < 1:
        raise _bad(ckpt, f"'world_size' must be an integer >= 1, got {world!r}")
    if state.get("scaler") is not None and not isinstance(state["scaler"], dict):
        raise _bad(ckpt, f"'scaler' must be an object or null, got {state['scaler']!r}")


def _check_optimizer_fields(ckpt: Path, opt: Any) -> None:
    groups = opt.get("param_groups") if isinstance(opt, dict) else None
    if not isinstance(groups, list):
        raise _bad(ckpt, f"'optimizer.param_groups' must be a list of objects, got {type(groups).__name__}")
    for i, g in enumerate(groups):
        _check_group(ckpt, i, g)
    keys = opt.get("state_keys") if isinstance(opt, dict) else None
    if keys is not None and not (isinstance(keys, dict) and all(
            isinstance(v, list) and all(isinstance(x, str) for x in v) for v in keys.values())):
        raise _bad(ckpt, "'optimizer.state_keys' must be an object of parameter name -> list of keys")


def read_state(ckpt: Path) -> dict[str, Any]:
    """The checked ``state.json`` of a checkpoint (field types and the hashes of its files verified)."""
    try:
        with open(ckpt / "state.json", encoding="utf-8") as fh:
            state = json.load(fh)
    except FileNotFoundError:
        raise DSLMError(f"checkpoint {ckpt} has no state.json: it is incomplete or not a checkpoint") from None
    except IsADirectoryError:
        raise DSLMError(f"checkpoint {ckpt}: state.json is a directory, not a file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DSLMError(f"checkpoint {ckpt}: state.json is corrupt ({exc})") from None
    check_state(ckpt, state)
    for name, digest in state["files"].items():
        f = ckpt / name
        if not f.is_file():
            raise DSLMError(f"checkpoint {ckpt} lacks {name}")
        if _sha256(f) != digest:
            raise DSLMError(f"checkpoint {ckpt}: {name} is corrupt or truncated (SHA-256 mismatch); "
                            "delete this checkpoint directory to fall back to an earlier one")
    return state


def verify_data_meta(ckpt: Path, state: Mapping[str, Any], data_dir: Path) -> None:
    """Raise DSLMError unless ``data_dir/meta.json`` is the one the checkpoint was written with.

    The checkpoint holds a copy of the run's ``data/meta.json`` whose SHA-256 is in ``state.json``
    (checkpoints written before this check have none and are accepted).
    """
    digest = state["files"].get("meta.json")
    if digest is None:
        return
    meta = data_dir / "meta.json"
    if not meta.is_file():
        raise DSLMError(f"{meta} is missing: the run's data directory is incomplete")
    if _sha256(meta) != digest:
        raise DSLMError(f"{meta} differs from the copy in checkpoint {ckpt} (SHA-256 mismatch): the run's data "
                        f"description was altered; restore it from {ckpt / 'meta.json'}")


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


def load_train_state(ckpt: Path, state: Mapping[str, Any],
                     param_shapes: Mapping[str, tuple[int, ...]] | None = None
                     ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(optimizer state dict keyed by parameter names, RNG tensors) of a checkpoint, checked.

    Checks (DSLMError naming the checkpoint): RNG states are 1-D uint8 tensors; the optimizer state
    is complete, i.e. every parameter has the keys recorded in ``optimizer.state_keys`` at save time
    (or, for checkpoints without that record, the same keys as the other parameters), no state
    belongs to a parameter outside the param groups, and moments have the shapes in `param_shapes`.
    """
    tensors = _load(ckpt / "train_state.safetensors")
    optim: dict[str, Any] = {"state": {}, "param_groups": []}
    rng: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if key.startswith("optim.") and "." in key[len("optim."):]:
            name, sub = key[len("optim."):].rsplit(".", 1)
            optim["state"].setdefault(name, {})[sub] = value
        elif key.startswith("rng."):
            if value.dtype != torch.uint8 or value.dim() != 1:
                raise DSLMError(f"checkpoint {ckpt}: RNG state {key} must be a 1-D uint8 tensor, got "
                                f"{str(value.dtype).replace('torch.', '')} of shape {tuple(value.shape)}")
            rng[key[4:]] = value
        else:
            raise DSLMError(f"checkpoint {ckpt}: unexpected tensor {key!r} in train_state.safetensors")
    for g in state["optimizer"]["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        optim["param_groups"].append(g)
    check_optimizer_state(ckpt, optim, state["optimizer"].get("state_keys"), param_shapes)
    return optim, rng


def check_optimizer_state(ckpt: Path, optim: Mapping[str, Any], state_keys: Mapping[str, list[str]] | None,
                          param_shapes: Mapping[str, tuple[int, ...]] | None = None) -> None:
    """Raise DSLMError unless the per-parameter optimizer state is complete and fits the model."""
    names = [n for g in optim["param_groups"] for n in g["params"]]
    state = optim["state"]
    stray = sorted(set(state) - set(names))
    if stray:
        raise DSLMError(f"checkpoint {ckpt}: optimizer state for parameters outside the param groups: {stray[:3]}")
    if state_keys is not None:
        want = {n: set(k) for n, k in state_keys.items()}
    else:  # no record: all parameters that have state must have the same keys
        union = set().union(*(set(v) for v in state.values())) if state else set()
        want = {n: union for n in names} if state else {}
    for n in names:
        have, need = set(state.get(n, {})), want.get(n, set())
        if have != need:
            lost = sorted(need - have) or "none"
            raise DSLMError(f"checkpoint {ckpt}: the optimizer state of parameter {n} is incomplete (missing "
                            f"{lost}, has {sorted(have)}): train_state.safetensors was altered or cut; "
                            "delete this checkpoint directory to fall back to an earlier one")
    if param_shapes is not None:
        missing = [n for n in names if n not in param_shapes]
        if missing:
            raise DSLMError(f"checkpoint {ckpt}: optimizer param groups name parameters this model lacks: "
                            f"{missing[:3]}")
        for n, st in state.items():
            for key, value in st.items():
                if value.dim() > 0 and tuple(value.shape) != tuple(param_shapes[n]):
                    raise DSLMError(f"checkpoint {ckpt}: optimizer state {n}.{key} has shape {tuple(value.shape)}, "
                                    f"the parameter has {tuple(param_shapes[n])}")


# public names for the sharded (FSDP) checkpoints of `deepscalelm.train.sharded`
sha256 = _sha256
save_tensors = _save_tensors

__all__ = ["save_checkpoint", "list_checkpoints", "latest_checkpoint", "resolve_checkpoint", "read_state",
           "check_state", "load_model_state", "load_train_state", "check_optimizer_state", "write_json_atomic",
           "latest_healthy", "health_of", "verify_data_meta", "commit_checkpoint", "sha256", "save_tensors"]
