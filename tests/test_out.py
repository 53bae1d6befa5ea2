"""How --out is written: a full disk as one line with the earlier run intact, and the same file mode for every
file of a run."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
from test_cli import FAST_TRAIN, snapshot

from promptlab.cli import main


@pytest.fixture(scope="module")
def pt_run(tiny_models, tmp_path_factory) -> Path:
    """A trained encoder prompt-tuning run: the soft prompt an unrelated --out must not wipe."""
    root = tmp_path_factory.mktemp("pt")
    (root / "fast.yaml").write_text("train:\n  dev_size: 8\n")
    out = root / "run"
    assert main(_train(tiny_models, "--config", str(root / "fast.yaml"), "--out", str(out))) == 0
    return out


def _train(models, *extra) -> list[str]:
    return ["train", "--task", "sentiment", "--model", str(models["encoder"]), "--method", "prompt-tuning",
            *FAST_TRAIN, *extra]


def _eval(models, *extra) -> list[str]:
    return ["eval", "--task", "sentiment", "--model", str(models["encoder"]), "--method", "zero-shot",
            "--limit", "4", *extra]


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def hidden(parent: Path) -> list[str]:
    """Staging, checkpoint and lock files beside a run: none may outlive a command."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def zs_dir(tiny_models, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zs") / "run"
    assert main(_eval(tiny_models, "--out", str(out))) == 0
    return out


# -- #11: a full disk ---------------------------------------------------------------------------------------
def _disk_full_safetensors(*_a, **_k):
    from safetensors import SafetensorError

    raise SafetensorError('Error while serializing: I/O error: No space left on device (os error 28) at path "x"')


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_writing_a_run_keeps_the_earlier_one(tiny_models, pt_run, run_cli, tmp_path, monkeypatch):
    out = _copy(pt_run, tmp_path / "x")
    before = snapshot(out)
    monkeypatch.setattr("promptlab.methods.adapted.save_file", _disk_full_safetensors)  # the artifact's anchors
    code, _, err = run_cli(*_train(tiny_models, "--config", pt_run.parent / "fast.yaml"), "--out", out)
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("promptlab: error: could not write run") and "x'" in err and "disk is full" in err
    assert snapshot(out) == before
    # nothing half-written; the finished training's checkpoint stays, so the rerun after freeing space resumes
    assert hidden(tmp_path) == [".x.work"] and list((tmp_path / ".x.work").glob("step-*"))


def test_disk_full_writing_a_checkpoint_is_one_line_and_leaves_nothing(tiny_models, run_cli, tmp_path, monkeypatch):
    monkeypatch.setattr("promptlab.checkpoints.save_file", _enospc)
    code, _, err = run_cli(*_train(tiny_models), "--out", tmp_path / "x")
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "could not write checkpoint" in err and ".x.work" in err and "disk is full" in err
    assert list(tmp_path.iterdir()) == []


def test_disk_full_writing_a_report_is_one_line(zs_dir, run_cli, tmp_path, monkeypatch):
    real = Path.write_text

    def write_text(self, *a, **k):
        if self.name == "report.md":
            raise OSError(errno.EDQUOT, "Disk quota exceeded", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", write_text)
    code, _, err = run_cli("report", zs_dir, "--out", tmp_path / "rep")
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "report.md" in err and "disk is full (disk quota exceeded)" in err


# -- #20: one file mode for every file of a run -------------------------------------------------------------
def test_safetensors_files_get_the_mode_every_other_file_gets(pt_run, tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    files = [p for p in pt_run.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(0o666 & ~umask) for p in files}

    from promptlab.checkpoints import TENSOR_FILE, CheckpointPlan, CheckpointStore

    store = CheckpointStore(CheckpointPlan(dir=tmp_path / "work"), keep=1)
    state = {"loop": {"steps": 1, "seconds": 0.0}, "history": [], "best_epoch": 0, "best_score": 0.0}
    path = store.save("step-00000001", state, {}, {}, {})
    assert oct((path / TENSOR_FILE).stat().st_mode & 0o777) == oct(0o666 & ~umask)
