"""What --out may replace, and how it is written: another run only with --overwrite, one writer at a time (an
OS lock), never through a symlink, never empty, a full disk as one line with the earlier run intact, and the
same file mode for every file of a run."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli import FAST_TRAIN, assert_clean_error, snapshot

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


# -- #2: --out replaces only a rerun of the same run -------------------------------------------------------
def test_eval_into_a_trained_run_is_refused_naming_what_differs(tiny_models, pt_run, run_cli, tmp_path):
    out = _copy(pt_run, tmp_path / "x")
    before = snapshot(out)
    code, _, err = run_cli(*_eval(tiny_models), "--out", out)
    assert_clean_error(code, err, "--out", "holds another run", "method: 'prompt-tuning' -> 'zero-shot'",
                       "--overwrite")
    assert snapshot(out) == before and hidden(tmp_path) == []


def test_overwrite_replaces_another_run(tiny_models, pt_run, run_cli, tmp_path):
    out = _copy(pt_run, tmp_path / "x")
    code, _, err = run_cli(*_eval(tiny_models), "--overwrite", "--out", out)
    assert code == 0, err
    assert json.loads((out / "metrics.json").read_text())["method"] == "zero-shot"
    assert not list(out.rglob("*.safetensors")) and hidden(tmp_path) == []  # the soft prompt is gone, as asked


def test_a_rerun_of_the_same_run_replaces_it_without_overwrite(tiny_models, run_cli, tmp_path):
    out = tmp_path / "zs"
    assert run_cli(*_eval(tiny_models), "--out", out)[0] == 0
    code, _, err = run_cli(*_eval(tiny_models, "--batch-size", "2"), "--out", out)  # not what defines the run
    assert code == 0, err
    assert json.loads((out / "metrics.json").read_text())["config"]["batch_size"] == 2


def test_compare_into_a_comparison_of_another_model_is_refused(tiny_models, pt_run, run_cli, tmp_path):
    cmp_dir = tmp_path / "cmp"
    _copy(pt_run, cmp_dir / "prompt-tuning")
    cfg = cmp_dir / "prompt-tuning" / "config.yaml"
    cfg.write_text(cfg.read_text().replace(str(tiny_models["encoder"]), "some/other-model"))
    before = snapshot(cmp_dir)
    code, _, err = run_cli("compare", "--task", "sentiment", "--model", tiny_models["encoder"], "--methods",
                           "zero-shot", "--eval-size", "4", "--out", cmp_dir)
    assert_clean_error(code, err, "holds another run", "prompt-tuning", "model: 'some/other-model'", "--overwrite")
    assert snapshot(cmp_dir) == before


# -- #3: one writer at a time ---------------------------------------------------------------------------------
HOLD = """
import sys
from pathlib import Path
from promptlab.atomic import locked
from promptlab.runs import lock_file
with locked(lock_file(Path(sys.argv[1])), "test"):
    print("locked", flush=True)
    sys.stdin.read()  # until the test closes stdin
"""


def _holder(out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_into_the_same_out_is_refused_while_the_first_writes(tiny_models, run_cli, tmp_path):
    out = tmp_path / "runs" / "x"
    proc = _holder(out)  # another process, as a second `promptlab train --out runs/x` would be
    try:
        code, _, err = run_cli(*_train(tiny_models), "--out", out)
        assert_clean_error(code, err, "another promptlab run is writing", "runs/x")
        assert not out.exists() and not (tmp_path / "runs" / ".x.work").exists()  # nor its checkpoint work dir
        code, _, err = run_cli(*_eval(tiny_models), "--out", tmp_path / "runs" / ".." / "runs" / "x")
        assert_clean_error(code, err, "another promptlab run is writing")  # however --out is spelled
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    code, _, err = run_cli(*_eval(tiny_models), "--out", out)  # released: the next run goes ahead
    assert code == 0, err
    assert hidden(out.parent) == []


def test_the_lock_is_released_when_its_holder_is_killed(tiny_models, run_cli, tmp_path):
    out = tmp_path / "x"
    proc = _holder(out)
    proc.kill()
    proc.wait(timeout=60)
    assert hidden(tmp_path) == [".x.lock"]  # a killed run leaves the file, not the lock
    code, _, err = run_cli(*_eval(tiny_models), "--out", out)
    assert code == 0, err
    assert hidden(tmp_path) == []


def test_a_run_in_process_holding_the_lock_refuses_a_second(tiny_models, run_cli, tmp_path):
    from promptlab.config import RunConfig
    from promptlab.runs import claimed

    out = tmp_path / "x"
    with claimed(out, RunConfig()):
        code, _, err = run_cli(*_eval(tiny_models), "--out", out)
    assert_clean_error(code, err, "another promptlab run is writing")
    assert not out.exists() and hidden(tmp_path) == []


# -- #10, #12: --out that is a symlink or empty ------------------------------------------------------------
def test_symlinked_out_is_refused_before_any_work(tiny_models, pt_run, run_cli, tmp_path):
    real = _copy(pt_run, tmp_path / "real")
    link = tmp_path / "link"
    link.symlink_to(real)
    before = snapshot(real)
    for argv in (_eval(tiny_models, "--overwrite"), _train(tiny_models)):
        code, out, err = run_cli(*argv, "--out", link)
        assert_clean_error(code, err, "--out", "is a symbolic link", "real directory")
        assert out == ""  # refused before any work: no table printed
    assert link.is_symlink() and snapshot(real) == before
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    code, _, err = run_cli(*_eval(tiny_models), "--out", dangling)
    assert_clean_error(code, err, "is a symbolic link")
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("command", ["eval", "train", "compare", "report", "demo"])
def test_empty_out_is_refused(command, tiny_models, zs_dir, run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = {"eval": _eval(tiny_models), "train": _train(tiny_models), "demo": ["demo"], "report": ["report", zs_dir],
            "compare": ["compare", "--task", "sentiment", "--model", tiny_models["encoder"], "--methods", "zero-shot"]}
    before = sorted(os.listdir(tmp_path))
    code, out, err = run_cli(*argv[command], "--out", "")
    assert_clean_error(code, err, "--out is empty", "--out runs/NAME")
    assert out == "" and sorted(os.listdir(tmp_path)) == before


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
