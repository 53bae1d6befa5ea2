"""Checkpoints and resume: a run killed at any step continues to exactly the result of an uninterrupted one.

The loop-level tests use a toy model with dropout (so the RNG state matters) and both optimizers
(Adafactor for input prompts, AdamW for the rest); the end-to-end test SIGKILLs a real `promptlab train`.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from promptlab import checkpoints
from promptlab.checkpoints import CheckpointPlan, check_resumable, work_dir
from promptlab.config import TrainConfig
from promptlab.errors import ConfigError
from promptlab.methods import get_method
from promptlab.training import epoch_batches, lr_factor, train_loop

N, BATCH = 24, 4  # 6 steps per epoch, 3 epochs, a checkpoint every 2 steps


class Toy(torch.nn.Module):
    """A frozen layer, dropout, and one trainable 'prompt' vector: the shape of soft-prompt training."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.frozen = torch.nn.Linear(8, 16)
        self.head = torch.nn.Linear(16, 3)
        with torch.no_grad():
            for p in (*self.frozen.parameters(), *self.head.parameters()):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.requires_grad_(False)
        self.prompt = torch.nn.Parameter(torch.randn(16, generator=g))
        self.drop = torch.nn.Dropout(0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(torch.relu(self.frozen(x) + self.prompt)))


_g = torch.Generator().manual_seed(1)
X, Y = torch.randn(N, 8, generator=_g), torch.randint(0, 3, (N,), generator=_g)
XD, YD = torch.randn(12, 8, generator=_g), torch.randint(0, 3, (12,), generator=_g)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine they cost 10-50x.
    The killed subprocess runs with one thread too: the same thread count keeps float reductions identical."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Crash(Exception):
    """Stands in for a SIGKILL: the loop stops mid-step and nothing after it runs."""


def run(plan: CheckpointPlan | None, method: str = "prompt-tuning", crash_at: int | None = None,
        nan_at: int | None = None, **kw) -> tuple[Toy, object]:
    model = Toy()
    calls = {"n": 0}

    def loss_fn(m: torch.nn.Module, idx: list[int]) -> torch.Tensor:
        calls["n"] += 1
        if crash_at is not None and calls["n"] == crash_at:
            raise Crash
        loss = F.cross_entropy(m(X[idx]), Y[idx])
        return loss * float("nan") if nan_at is not None and calls["n"] >= nan_at else loss

    def dev_fn(m: torch.nn.Module) -> float:  # continuous, so each epoch's score reflects the exact parameters
        with torch.no_grad():
            return -float(F.cross_entropy(m(XD), YD))

    loop = {"checkpoint": plan, "data_fingerprint": "toy"}
    loop.update({k: kw.pop(k) for k in list(kw) if k in loop})
    cfg = TrainConfig(epochs=3, batch_size=BATCH, lr=0.05, patience=5, checkpoint_every=2, **kw)
    m = get_method(method)
    result = train_loop(model, [1] * N, cfg, loss_fn=loss_fn, dev_fn=dev_fn, seed=3, optimizer=m.optimizer,
                        default_lr=m.default_lr, label=method, progress=False, **loop)
    return model, result


def no_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


@pytest.mark.parametrize("method,schedule", [("prompt-tuning", "constant"), ("lora", "constant"),
                                             ("lora", "linear")])  # Adafactor and AdamW state; a decaying lr
@pytest.mark.parametrize("crash_at", [4, 7, 18])  # mid-epoch; first step after an epoch end; last step
def test_resumed_training_is_bit_identical(tmp_path, method, schedule, crash_at):
    ref, ref_result = run(None, method, schedule=schedule)
    plan = CheckpointPlan(tmp_path / "ck")
    with pytest.raises(Crash):
        run(plan, method, crash_at=crash_at, schedule=schedule)
    assert checkpoints.CheckpointStore(plan, 2).complete(), "no checkpoint was written before the crash"
    resumed, result = run(plan, method, schedule=schedule)
    assert result.resumed_from is not None and result.resumed_from < crash_at
    assert torch.equal(resumed.prompt, ref.prompt)
    assert no_seconds(result.history) == no_seconds(ref_result.history)
    assert (result.steps, result.best_epoch, result.best_score) == (ref_result.steps, ref_result.best_epoch,
                                                                    ref_result.best_score)


def test_linear_schedule_warms_up_then_decays_to_zero_and_changes_training():
    f = [lr_factor("linear", s, 100, 0.1) for s in range(100)]
    assert f[0] < f[5] < f[9] <= 1.0 and f[10] == 1.0  # 10 warm-up steps, then the full lr
    assert all(a > b for a, b in itertools.pairwise(f[10:])) and 0 < f[-1] <= 0.02
    assert {lr_factor("constant", s, 100, 0.1) for s in range(100)} == {1.0}
    constant, _ = run(None, "lora")
    linear, _ = run(None, "lora", schedule="linear")
    assert not torch.equal(constant.prompt, linear.prompt)


def test_resume_without_the_rng_state_would_differ(tmp_path, monkeypatch):
    """Guards the test above: dropout draws from the torch RNG, so restoring it is what makes resume exact."""
    _, ref = run(None)
    plan = CheckpointPlan(tmp_path / "ck")
    with pytest.raises(Crash):
        run(plan, crash_at=8)
    monkeypatch.setattr("promptlab.training.restore_rng", lambda meta, tensors: None)
    _, result = run(plan)
    # Epoch 1 (before the crash) agrees; the epochs after it saw other dropout masks.
    assert no_seconds(result.history)[0] == no_seconds(ref.history)[0]
    assert no_seconds(result.history)[1:] != no_seconds(ref.history)[1:]


def test_checkpoints_are_atomic_pickle_free_and_only_the_last_k_kept(tmp_path):
    plan = CheckpointPlan(tmp_path / "ck", config_file=tmp_path / "ck" / "config.yaml", config_text="seed: 3\n")
    run(plan, keep_checkpoints=2)
    names = sorted(p.name for p in plan.dir.iterdir())
    # 18 steps, every 2 and at each epoch end; the newest two survive, no temporary directory is left.
    assert names == ["config.yaml", "step-00000018", "step-00000018-epoch"]
    for ck in plan.dir.glob("step-*"):
        assert sorted(p.name for p in ck.iterdir()) == ["state.json", "tensors.safetensors"]
        state = json.loads((ck / "state.json").read_text())
        assert state["loop"]["steps"] == 18 and state["trainable"] == ["prompt"]
        assert "trainable.prompt" in load_file(str(ck / "tensors.safetensors"))
    assert (plan.dir / "config.yaml").read_text() == "seed: 3\n"


def _zero_tensors(ck: Path) -> None:  # disk trouble, not a partial write
    (ck / "tensors.safetensors").write_bytes(b"\x00" * 10)


def _drop_loop(ck: Path) -> None:  # a hand-edited state.json: it gave a KeyError traceback
    state = json.loads((ck / "state.json").read_text())
    del state["loop"]
    (ck / "state.json").write_text(json.dumps(state))


@pytest.mark.parametrize("damage", [_zero_tensors, _drop_loop], ids=["tensors", "state-without-loop"])
def test_an_unreadable_newest_checkpoint_falls_back_to_the_previous(tmp_path, capsys, damage):
    ref, _ = run(None)
    plan = CheckpointPlan(tmp_path / "ck")
    with pytest.raises(Crash):
        run(plan, crash_at=8, keep_checkpoints=3)
    damage(checkpoints.CheckpointStore(plan, 3).complete()[-1])
    resumed, result = run(plan)
    # step-6-epoch was damaged; step-6 (taken before that epoch's dev evaluation) is the one before it
    assert result.resumed_from == 6
    assert "skipping unreadable checkpoint" in capsys.readouterr().err
    assert torch.equal(resumed.prompt, ref.prompt)


def test_non_finite_loss_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    plan = CheckpointPlan(tmp_path / "ck")
    with pytest.raises(ConfigError) as info:
        run(plan, nan_at=8)
    message = str(info.value)
    assert "training loss became nan at step 8 (epoch 2)" in message
    assert "lower --lr" in message and "last good checkpoint (step 6)" in message and "--resume" in message
    store = checkpoints.CheckpointStore(plan, 2)
    last = checkpoints.load_checkpoint(store.complete()[-1])
    assert last.step == 6 and all(torch.isfinite(t).all() for t in last.trainable.values())


def test_a_non_finite_loss_before_any_update_blames_the_model_not_the_lr(tmp_path):
    with pytest.raises(ConfigError, match=r"at step 1 .*not finite before any update"):
        run(None, nan_at=1)


def test_batch_order_is_a_function_of_seed_and_epoch():
    lengths = list(range(50))
    assert epoch_batches(lengths, 4, 7, 2) == epoch_batches(lengths, 4, 7, 2)
    assert epoch_batches(lengths, 4, 7, 2) != epoch_batches(lengths, 4, 7, 3)
    assert epoch_batches(lengths, 4, 7, 2) != epoch_batches(lengths, 4, 8, 2)
    assert sorted(i for b in epoch_batches(lengths, 4, 7, 1) for i in b) == lengths


def test_changed_training_data_is_not_resumed(tmp_path):
    plan = CheckpointPlan(tmp_path / "ck")
    with pytest.raises(Crash):
        run(plan, crash_at=8)
    with pytest.raises(ConfigError, match="other parameters or training data"):
        run(plan, data_fingerprint="other data")


def _fake_work(work: Path, text: str) -> None:
    (work / "step-00000003").mkdir(parents=True)
    (work / "config.yaml").write_text(text)


def test_resume_policy_same_settings_resume_changed_ones_need_resume_identity_never(tmp_path):
    work = tmp_path / ".run.work"
    _fake_work(work, "seed: 1\ntrain:\n  lr: 0.3\n  checkpoint_every: 5\n")
    assert check_resumable(work, {"seed": 1, "train": {"lr": 0.3, "checkpoint_every": 50}}, explicit=False)
    with pytest.raises(ConfigError, match=r"train.lr: 0.3 -> 0.1.*pass --resume"):
        check_resumable(work, {"seed": 1, "train": {"lr": 0.1}}, explicit=False)
    assert check_resumable(work, {"seed": 1, "train": {"lr": 0.1}}, explicit=True)
    with pytest.raises(ConfigError, match=r"different run \(seed: 1 -> 2.*delete"):
        check_resumable(work, {"seed": 2, "train": {"lr": 0.3}}, explicit=True)
    assert not check_resumable(tmp_path / ".none.work", {}, explicit=False)
    with pytest.raises(ConfigError, match="no checkpoint to resume"):
        check_resumable(tmp_path / ".none.work", {}, explicit=True)


def test_cli_refuses_to_mix_checkpoints_of_another_run(tiny_models, run_cli, tmp_path):
    from promptlab.config import RunConfig

    out = tmp_path / "run"
    earlier = RunConfig(model=str(tiny_models["encoder"]), method="prompt-tuning", seed=0)
    _fake_work(work_dir(out), earlier.to_yaml())
    code, _, err = run_cli("train", "--task", "sentiment", "--model", tiny_models["encoder"], "--method",
                           "prompt-tuning", "--seed", "5", "--out", out)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "holds checkpoints of a different run" in err and "seed: 0 -> 5" in err
    assert not out.exists() and (work_dir(out) / "step-00000003").is_dir()  # nothing deleted behind the user
    code, _, err = run_cli("train", "--resume", "--out", tmp_path / "never-ran")
    assert code == 2 and "no checkpoint to resume" in err


# -- the real thing: SIGKILL a training process, resume it ------------------------------------------------
TRAIN = ["train", "--task", "sentiment", "--method", "prompt-tuning", "--train-size", "32", "--epochs", "3",
         "--virtual-tokens", "4", "--limit", "8", "--train-batch-size", "4", "--checkpoint-every", "3"]


def _exe() -> Path:
    exe = Path(sys.executable).with_name("promptlab")
    if not exe.exists():
        pytest.skip("console script not installed next to the interpreter")
    return exe


def test_sigkilled_train_resumes_to_the_uninterrupted_result(tiny_models, run_cli, tmp_path):
    """24 steps on the tiny encoder (dropout 0.1 on); killed as soon as the first checkpoint (step 3) exists,
    which leaves it a few seconds of work: the kill lands mid-run, never after the run directory is written."""
    (tmp_path / "fast.yaml").write_text("train:\n  dev_size: 8\n")
    argv = [*TRAIN, "--model", str(tiny_models["encoder"]), "--config", str(tmp_path / "fast.yaml")]
    ref, out = tmp_path / "ref", tmp_path / "killed"
    code, _, err = run_cli(*argv, "--out", ref)
    assert code == 0, err

    work = work_dir(out)
    proc = subprocess.Popen([str(_exe()), *argv, "--out", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not list(work.glob("step-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode() if proc.stderr else ""
    assert not out.exists()  # killed mid-run: no run directory, nothing that looks complete
    assert list(work.glob("step-*")) and (work / "config.yaml").is_file()

    code, _, err = run_cli("train", "--resume", "--out", out)  # the recorded config repeats the command
    assert code == 0, err
    assert "resuming prompt-tuning at step" in err
    assert not work.exists()  # served its purpose once the run directory is complete

    a = load_file(str(ref / "artifact" / "adapter_model.safetensors"))
    b = load_file(str(out / "artifact" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for f in ("artifact/adapter_model.safetensors", "artifact/promptlab.json", "predictions.jsonl"):
        assert (ref / f).read_bytes() == (out / f).read_bytes(), f
    m_ref, m_out = (json.loads((d / "metrics.json").read_text()) for d in (ref, out))
    assert m_out["training"]["resumed_from_step"] > 0 and m_ref["training"]["resumed_from_step"] is None
    assert m_out["training"]["examples_per_process"] == m_ref["training"]["examples_per_process"] == 3 * 32
    assert m_out["metrics"] == m_ref["metrics"]
    assert no_seconds(m_out["history"]) == no_seconds(m_ref["history"])
