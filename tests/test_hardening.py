"""Bad input and crash safety: each case gives a one-line error or the correct behaviour.

Covers untrusted ``data/meta.json``, tampered checkpoints (optimizer state, ``state.json`` types,
RNG tensors, ``run.json``), refusing configs that cannot fit in memory, cleaning up after a failed
setup, writability checks, ``--debug``, pruning by rename, orphaned staging folders, the
divergence check behind "last good checkpoint", the cap on ``--on-nan skip`` and CLI conventions.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from train_helpers import tiny_train_config  # tests/ is on sys.path

from deepscalelm import ModelConfig
from deepscalelm.cli import build_parser, main
from deepscalelm.errors import DSLMError
from deepscalelm.train import checkpoint as ck
from deepscalelm.train.config import TrainConfig, resolve
from deepscalelm.train.guard import NonFiniteError, divergence_check, reference_loss
from deepscalelm.train.loop import train
from deepscalelm.train.memory import check_memory, param_count
from deepscalelm.train.run import check_out_dir, remove_orphaned_staging

torch.set_num_threads(1)

TINY = ModelConfig(n_layers=2, d_model=16, n_heads=2, seq_len=16, vocab_size=256)
QUIET = dict(progress=False, log=lambda *_: None)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished 6-step run (checkpoints at steps 3 and 6), shared read-only by the tests below."""
    base = tmp_path_factory.mktemp("trained")
    train(base / "run", TINY, tiny_train_config(base), **QUIET)
    return base / "run"


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A private copy of the trained run, free to be damaged."""
    dst = tmp_path / "run"
    shutil.copytree(trained, dst)
    return dst


def _rehash(ckpt: Path, name: str) -> None:
    state = json.loads((ckpt / "state.json").read_text())
    state["files"][name] = ck._sha256(ckpt / name)
    (ckpt / "state.json").write_text(json.dumps(state))


def _edit_state(ckpt: Path, **changes) -> None:
    state = json.loads((ckpt / "state.json").read_text())
    state.update(changes)
    (ckpt / "state.json").write_text(json.dumps(state))


def _one_line_error(capsys, rc: int, argv: list[str]) -> str:
    assert main(argv) == rc
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------------------------ meta.json
def test_meta_json_dtype_and_file_are_validated(run, tmp_path):
    from deepscalelm.data.stream import open_stream

    data = run / "data"
    meta = json.loads((data / "meta.json").read_text())
    assert len(open_stream(data, "val")) == meta["splits"]["val"]["n_tokens"]
    cases = [({"dtype": "|O"}, "must be an integer type"), ({"dtype": "<f4"}, "must be an integer type"),
             ({"dtype": "nonsense"}, "not a numpy dtype"),
             ({"file": "../../../../etc/hostname"}, "file name inside"),
             ({"file": "/etc/hostname"}, "file name inside"),
             ({"n_tokens": "5"}, "'n_tokens' must be an integer")]
    for change, message in cases:
        bad = json.loads(json.dumps(meta))
        bad["splits"]["val"].update(change)
        (data / "meta.json").write_text(json.dumps(bad))
        with pytest.raises(DSLMError, match=message):
            open_stream(data, "val")
    outside = tmp_path / "outside.bin"
    outside.write_bytes((data / "val.bin").read_bytes())
    (data / "link.bin").symlink_to(outside)
    bad = json.loads(json.dumps(meta))
    bad["splits"]["val"]["file"] = "link.bin"
    (data / "meta.json").write_text(json.dumps(bad))
    with pytest.raises(DSLMError, match="leads outside"):
        open_stream(data, "val")


def test_meta_json_is_covered_by_the_checkpoint_hashes(run, capsys):
    ckpt = ck.latest_checkpoint(run)
    state = ck.read_state(ckpt)
    assert state["files"]["meta.json"] == ck._sha256(run / "data" / "meta.json")
    meta = json.loads((run / "data" / "meta.json").read_text())
    bad = json.loads(json.dumps(meta))
    bad["splits"]["val"]["dtype"] = "|O"  # used to make `dslm eval` segfault
    (run / "data" / "meta.json").write_text(json.dumps(bad))
    err = _one_line_error(capsys, 2, ["eval", str(run)])
    assert "meta.json differs from the copy in checkpoint" in err
    meta["splits"]["val"]["n_bytes"] += 1  # valid, but not what the run was trained with: bits per byte change
    (run / "data" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DSLMError, match="meta.json differs"):
        train(run, TINY, TrainConfig(), resume=True, explicit_config=False, **QUIET)


# ------------------------------------------------------------------------------ tampered checkpoints
def test_missing_optimizer_moments_are_detected_on_resume(run):
    ckpt = ck.latest_checkpoint(run)
    path = ckpt / "train_state.safetensors"
    tensors = load_file(str(path))
    victim = "layers.0.ffn.fc1.weight" if "optim.layers.0.ffn.fc1.weight.exp_avg" in tensors else \
        sorted(k for k in tensors if k.endswith(".exp_avg"))[0][len("optim."):-len(".exp_avg")]
    for key in ("exp_avg", "exp_avg_sq"):
        del tensors[f"optim.{victim}.{key}"]
    save_file(tensors, str(path))
    _rehash(ckpt, "train_state.safetensors")
    with pytest.raises(DSLMError, match=rf"optimizer state of parameter {victim} is incomplete.*exp_avg"):
        train(run, TINY, TrainConfig(), resume=True, explicit_config=False, **QUIET)
    # a checkpoint without the recorded key list is still checked (the keys of the other parameters)
    state = json.loads((ckpt / "state.json").read_text())
    del state["optimizer"]["state_keys"]
    (ckpt / "state.json").write_text(json.dumps(state))
    with pytest.raises(DSLMError, match="is incomplete"):
        ck.load_train_state(ckpt, ck.read_state(ckpt))


def test_optimizer_moment_of_the_wrong_shape_is_detected(run):
    ckpt = ck.latest_checkpoint(run)
    path = ckpt / "train_state.safetensors"
    tensors = load_file(str(path))
    key = sorted(k for k in tensors if k.endswith(".exp_avg") and tensors[k].dim() == 2)[0]
    tensors[key] = tensors[key][:1].contiguous()
    save_file(tensors, str(path))
    _rehash(ckpt, "train_state.safetensors")
    with pytest.raises(DSLMError, match="has shape"):
        train(run, TINY, TrainConfig(), resume=True, explicit_config=False, **QUIET)


def test_rng_tensor_of_the_wrong_dtype_is_one_line(run):
    ckpt = ck.latest_checkpoint(run)
    path = ckpt / "train_state.safetensors"
    tensors = load_file(str(path))
    tensors["rng.cpu.rank0"] = tensors["rng.cpu.rank0"].float()
    save_file(tensors, str(path))
    _rehash(ckpt, "train_state.safetensors")
    with pytest.raises(DSLMError, match=r"rng.cpu.rank0 must be a 1-D uint8 tensor, got float32"):
        train(run, TINY, TrainConfig(), resume=True, explicit_config=False, **QUIET)


@pytest.mark.parametrize("changes, message", [
    ({"step": "ten"}, r"state.json: 'step' must be an integer >= 0, got 'ten'"),
    ({"files": ["model.safetensors"]}, r"state.json: 'files' must be an object"),
    ({"files": {"../run.json": "0"}}, r"only name files inside the checkpoint"),
    ({"optimizer": {"param_groups": "x"}}, r"state.json: 'optimizer.param_groups' must be a list"),
    ({"optimizer": {"param_groups": ["x"]}}, r"param_groups\[0\] must be an object"),
    ({"optimizer": {"param_groups": [{"params": "x"}]}}, r"param_groups\[0\].params must be a list"),
    ({"model_config": 5}, r"'model_config' must be an object"),
    ({"world_size": "2"}, r"'world_size' must be an integer"),
])
def test_state_json_of_wrong_types_names_the_file_and_field(run, capsys, changes, message):
    ckpt = ck.latest_checkpoint(run)
    _edit_state(ckpt, **changes)
    with pytest.raises(DSLMError, match=message) as info:
        ck.read_state(ckpt)
    assert str(ckpt) in str(info.value)
    err = _one_line_error(capsys, 2, ["eval", str(ckpt)])
    assert "state.json" in err


def test_run_json_with_a_model_that_is_not_an_object(run, capsys):
    info = json.loads((run / "run.json").read_text())
    info["model"] = 5
    (run / "run.json").write_text(json.dumps(info))
    err = _one_line_error(capsys, 2, ["train", "--out", str(run), "--resume", "--no-progress"])
    assert "run.json: 'model' must be an object of ModelConfig fields, got 5" in err
    info["model"] = {"n_layerz": 2}
    (run / "run.json").write_text(json.dumps(info))
    err = _one_line_error(capsys, 2, ["train", "--out", str(run), "--resume", "--no-progress"])
    assert "run.json" in err and "unknown ModelConfig field(s) ['n_layerz']" in err


def test_config_file_with_a_model_that_is_not_a_mapping(tmp_path):
    f = tmp_path / "c.json"
    f.write_text('{"model": 5}')
    with pytest.raises(DSLMError, match="'model' must be a mapping of ModelConfig fields, got 5"):
        resolve("tiny", str(f))
    with pytest.raises(ValueError, match="ModelConfig expects an object of fields"):
        ModelConfig.from_dict(5)


# ------------------------------------------------------------------------------------ memory
@pytest.mark.parametrize("flag, value", [("--n-layers", "100000000"), ("--d-model", "1048576")])
def test_configs_that_cannot_fit_are_refused_fast_and_leave_nothing(tmp_path, capsys, flag, value):
    out = tmp_path / "big"
    t0 = time.perf_counter()
    err = _one_line_error(capsys, 2, ["train", "--preset", "tiny", flag, value, "--out", str(out), "--no-progress"])
    assert time.perf_counter() - t0 < 10
    assert "the model needs about" in err and "is free on cpu" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    # a retry with a sane size is not blocked
    assert main(["train", "--preset", "tiny", "--out", str(out), "--no-progress", "--max-steps", "1",
                 "--set", "sample_tokens=0", "--set", "eval_batches=1"]) == 0


def test_param_count_estimate_matches_the_models():
    from deepscalelm.models import build_model

    for kw in (dict(), dict(arch="encoder"), dict(arch="encoder-decoder"), dict(arch="vit"),
               dict(tie_embeddings=False), dict(bias=False), dict(activation="swiglu"), dict(n_kv_heads=2),
               dict(position="rope"), dict(norm_type="rmsnorm"),
               dict(activation="geglu", n_kv_heads=1, position="rope", bias=False, norm_type="rmsnorm")):
        c = ModelConfig(n_layers=3, d_model=64, n_heads=4, seq_len=32, scheme="normal", **kw)
        with torch.device("meta"):
            n = sum(p.numel() for p in build_model(c).parameters())
        assert 0.9 * n <= param_count(c) <= n, kw
    c = ModelConfig(n_layers=4, d_model=64, n_heads=4, seq_len=32)
    need = check_memory(c, 8, available=1 << 40)
    assert need > 16 * param_count(c)
    with pytest.raises(DSLMError, match="only 1.0 MiB is free"):
        check_memory(c, 8, available=1 << 20)
    assert check_memory(c, 8, checkpointing=True, available=1 << 40) < need


def test_failed_model_build_removes_the_prepared_run(tmp_path):
    t = tiny_train_config(tmp_path, max_steps=1, sample_tokens=0)
    out = tmp_path / "run"

    def oom(_config):
        raise MemoryError

    with pytest.raises(DSLMError, match="out of memory while setting up the model"):
        train(out, TINY, t, factory=oom, **QUIET)
    assert not out.exists()

    def broken(_config):
        raise RuntimeError("cannot build")

    out.mkdir()  # an empty directory given by the user stays, empty
    with pytest.raises(RuntimeError, match="cannot build"):
        train(out, TINY, t, factory=broken, **QUIET)
    assert out.is_dir() and not any(out.iterdir())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert train(out, TINY, t, **QUIET).steps == 1


# ------------------------------------------------------------------------------------ writability
def _deny(monkeypatch, denied: Path) -> None:
    import tempfile

    real = tempfile.mkstemp

    def mkstemp(*a, dir=None, **kw):  # noqa: A002 - tempfile's keyword
        if dir is not None and Path(dir).resolve() == denied.resolve():
            raise PermissionError(13, "Permission denied")
        return real(*a, dir=dir, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def test_unwritable_out_and_checkpoints_are_refused_up_front(run, tmp_path, monkeypatch, capsys):
    parent = tmp_path / "ro"
    parent.mkdir()
    _deny(monkeypatch, parent)
    err = _one_line_error(capsys, 2, ["train", "--preset", "tiny", "--out", str(parent / "a" / "b"), "--no-progress"])
    assert f"parent directory {parent} is not writable" in err
    assert list(parent.iterdir()) == []
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    _deny(monkeypatch, run / "checkpoints")
    with pytest.raises(DSLMError, match="checkpoint directory .* is not writable"):
        train(run, TINY, TrainConfig(), resume=True, explicit_config=False, **QUIET)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_parent_directory_really_refused(tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        with pytest.raises(DSLMError, match="not writable"):
            check_out_dir(parent / "run", resume=False)
    finally:
        parent.chmod(0o700)


def test_out_inside_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(DSLMError, match="is not a directory"):
        check_out_dir(f / "run", resume=False)


# ------------------------------------------------------------------------------------ --debug
def test_debug_shows_the_traceback_and_unexpected_errors_are_one_line(tmp_path, capsys, monkeypatch):
    assert main(["--debug", "eval", str(tmp_path / "nope")]) == 2
    assert "Traceback" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nope"), "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err
    import deepscalelm.commands.eval as ev

    def boom(_args):
        raise OSError(28, "No space left on device\n(second line)")

    monkeypatch.setattr(ev, "run", boom)
    err = _one_line_error(capsys, 1, ["eval", str(tmp_path)])
    assert "OSError: [Errno 28] No space left on device (second line)" in err and "--debug" in err
    assert main(["eval", str(tmp_path), "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ pruning
def test_pruning_renames_before_deleting(run, monkeypatch):
    root = run / "checkpoints"
    old = ck.list_checkpoints(run)[0][1]

    def killed(path, *a, **kw):  # the process dies while deleting
        raise KeyboardInterrupt

    monkeypatch.setattr(ck.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        ck.prune(root, keep=1)
    monkeypatch.undo()
    assert not old.exists()  # no half-deleted step-* directory
    leftovers = [p for p in root.iterdir() if p.name.startswith(".old-")]
    assert len(leftovers) == 1 and (leftovers[0] / "state.json").is_file()
    leftovers[0].rename(root / f".old-{old.name}-999999-1")  # as if left by a killed process
    half = root / "step-0000001"  # a step directory without state.json (older versions deleted in place)
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\0")
    assert [p.name for _, p in ck.list_checkpoints(run)] == ["step-0000006"]
    ck.prune(root, keep=1)
    assert sorted(p.name for p in root.iterdir()) == ["step-0000006"]


def test_orphaned_staging_folders_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = tmp_path / f".old-run.staging-{dead.pid}"
    (orphan / "data").mkdir(parents=True)
    (orphan / "data" / "train.bin").write_bytes(b"\0" * 100)
    alive = tmp_path / f".other.staging-{os.getppid()}"
    alive.mkdir()
    assert remove_orphaned_staging(tmp_path) == [orphan]
    assert not orphan.exists() and alive.exists()
    orphan.mkdir()
    train(tmp_path / "run", TINY, tiny_train_config(tmp_path, max_steps=1, sample_tokens=0), **QUIET)
    assert not orphan.exists() and alive.exists()


# ------------------------------------------------------------------------------------ NaN guard
class _Scale:
    """Forward hook multiplying the logits by `value` (1: off; large: a diverged model; inf: NaN)."""

    def __init__(self) -> None:
        self.value = 1.0

    def __call__(self, _m, _inp, out):
        return out * self.value if self.value != 1.0 else out


def _scaled_factory(scale: _Scale):
    from deepscalelm.models import build_model

    def make(config: ModelConfig):
        m = build_model(config)
        m.register_forward_hook(scale)
        return m
    return make


def test_divergence_check():
    ref = reference_loss(6.0, 256)
    assert ref == 6.0 and reference_loss(None, 256) == pytest.approx(5.545, abs=1e-3)
    assert divergence_check([5.0, 4.0], ref)["ok"]
    assert not divergence_check([3.8e11], ref)["ok"]
    assert not divergence_check([4.0], ref, val_loss=float("nan"))["ok"]
    assert not divergence_check([], ref)["ok"]
    assert not divergence_check([4.0], ref, weights_finite=False)["ok"]


def test_last_good_checkpoint_passed_the_divergence_check(tmp_path):
    scale = _Scale()
    logs: list[str] = []

    def arm(step, _rec):
        scale.value = 1e4 if 3 <= step < 7 else (float("inf") if step >= 7 else 1.0)

    t = tiny_train_config(tmp_path, max_steps=9, keep_checkpoints=1, sample_tokens=0)
    with pytest.raises(NonFiniteError, match=r"step 8.*last good checkpoint \(passed the divergence check\): "
                                             r".*step-0000003"):
        train(tmp_path / "run", TINY, t, factory=_scaled_factory(scale), callbacks=[arm], progress=False,
              log=logs.append)
    root = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-0000003", "step-0000006"]  # kept despite keep=1
    assert ck.read_state(root / "step-0000003")["health"]["ok"] is True
    bad = ck.read_state(root / "step-0000006")["health"]
    assert bad["ok"] is False and "train loss" in bad["reason"]
    assert any("step-0000006 failed the divergence check" in m and "step-0000003 is kept" in m for m in logs)


def test_on_nan_skip_is_capped(tmp_path):
    scale = _Scale()

    def arm(step, _rec):
        scale.value = float("inf") if step >= 2 else 1.0

    t = tiny_train_config(tmp_path, on_nan="skip", max_nan_skips=2, sample_tokens=0)
    with pytest.raises(NonFiniteError, match=r"step 5 after 2 consecutive skipped steps \(max_nan_skips=2\)"):
        train(tmp_path / "run", TINY, t, factory=_scaled_factory(scale), callbacks=[arm], **QUIET)
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if r.get("skipped")] == [3, 4]
    with pytest.raises(ValueError, match="max_nan_skips must be an integer >= 0"):
        TrainConfig(max_nan_skips=-1)


# ------------------------------------------------------------------------------------ messages
def test_task_file_that_is_a_directory(tmp_path):
    from deepscalelm.tasks import read_boolq, read_sst2

    with pytest.raises(DSLMError, match="is a directory"):
        read_sst2(tmp_path)
    with pytest.raises(DSLMError, match="is a directory"):
        read_boolq(tmp_path)
    with pytest.raises(DSLMError, match="does not exist"):
        read_sst2(tmp_path / "missing.txt")
    from deepscalelm.tasks.files import read_table

    (tmp_path / "train.jsonl").mkdir()
    with pytest.raises(DSLMError, match="is a directory"):
        read_table(tmp_path / "train.jsonl")


def test_eval_on_a_short_file_does_not_advise_seq_len(trained, tmp_path, capsys):
    f = tmp_path / "short.txt"
    f.write_text("tiny\n")
    err = _one_line_error(capsys, 2, ["eval", str(trained), "--file", str(f)])
    assert "--seq-len" not in err and "encodes to 5 tokens" in err and "longer file" in err


# ------------------------------------------------------------------------------------ CLI flags
def test_boolean_flags_have_no_forms():
    from deepscalelm.commands._config_args import config_from_args

    parser = build_parser()
    for argv, bias, tie in ((["predict"], True, True), (["predict", "--no-bias"], False, True),
                            (["predict", "--bias"], True, True), (["predict", "--bias", "false"], False, True),
                            (["check", "--no-tie-embeddings", "--bias", "yes"], True, False)):
        args = parser.parse_args(argv)
        cfg = config_from_args(args)
        assert (cfg.bias, cfg.tie_embeddings) == (bias, tie), argv
    for argv in (["predict", "--no-bias", "false"], ["predict", "--bias", "maybe"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
    args = parser.parse_args(["train", "--no-compile", "--fsdp", "--no-activation-checkpointing"])
    assert (args.compile, args.fsdp, args.activation_checkpointing) == (False, True, False)
    assert parser.parse_args(["train"]).compile is None
