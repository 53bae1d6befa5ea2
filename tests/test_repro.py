"""Reproducibility: the same command and seed give the same metrics and the same artifact bytes, and every
run records what it would take to repeat it (versions, git revision, data files' sha256, resolved config)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from promptlab.config import RunConfig, from_dict

# --init random: the soft prompt's starting values come from the seed alone (seeded before every fit).
ARGV = ["train", "--task", "sentiment", "--method", "prompt-tuning", "--init", "random", "--train-size", "16",
        "--epochs", "2", "--virtual-tokens", "4", "--limit", "8", "--train-batch-size", "4"]


def untimed(obj: Any) -> Any:
    """metrics.json without wall-clock values (train/eval seconds, throughput, per-epoch seconds)."""
    if isinstance(obj, dict):
        return {k: untimed(v) for k, v in obj.items() if "second" not in k}
    if isinstance(obj, list):
        return [untimed(v) for v in obj]
    return obj


def files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine they cost 10-50x."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def runs(tiny_models, tmp_path_factory, one_thread) -> dict[str, Path]:
    from promptlab.cli import main

    root = tmp_path_factory.mktemp("repro")
    (root / "fast.yaml").write_text("train:\n  dev_size: 8\n")
    out = {}
    for name, seed in (("a", "1"), ("b", "1"), ("other-seed", "2")):
        out[name] = root / name
        code = main([*ARGV, "--model", str(tiny_models["encoder"]), "--config", str(root / "fast.yaml"),
                     "--seed", seed, "--out", str(out[name])])
        assert code == 0
    return out


def test_same_command_and_seed_give_identical_metrics_and_artifact_bytes(runs):
    a, b = runs["a"], runs["b"]
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (a, b))
    assert untimed(ma) == untimed(mb)
    assert ma["history"] and all(h["train_loss"] > 0 for h in ma["history"])
    fa, fb = files(a), files(b)
    assert fa.keys() == fb.keys() and "artifact/adapter_model.safetensors" in fa
    differing = [f for f in fa if f != "metrics.json" and fa[f] != fb[f]]
    assert differing == []  # artifact, predictions.jsonl, config.yaml: byte for byte


def test_another_seed_gives_another_soft_prompt(runs):
    """Guards the test above: the artifact does depend on the seed, so equality there is not vacuous."""
    weights = "artifact/adapter_model.safetensors"
    assert (runs["a"] / weights).read_bytes() != (runs["other-seed"] / weights).read_bytes()


def test_a_run_records_versions_git_revision_data_hashes_and_resolved_config(runs):
    run = runs["a"]
    m = json.loads((run / "metrics.json").read_text())
    assert {"python", "torch", "transformers", "peft"} <= set(m["versions"])

    read = m["data"]["files"]
    assert any(p.endswith("train.jsonl") for p in read) and any(p.endswith("sentiment.yaml") for p in read)
    for path, digest in read.items():
        assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == digest

    # The full config, as resolved (flags over YAML over defaults), in metrics.json and config.yaml alike.
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert m["config"] == resolved == from_dict(RunConfig, resolved, "config.yaml").to_dict()
    assert (resolved["seed"], resolved["train"]["init"], resolved["train"]["dev_size"]) == (1, "random", 8)
    extras = json.loads((run / "artifact" / "promptlab.json").read_text())["extras"]
    assert (extras["lr"], extras["optimizer"]) == (0.3, "Adafactor")  # what lr: None resolved to

    src = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    if head.returncode != 0:
        assert m["git"] is None
    else:
        assert m["git"]["revision"] == head.stdout.strip() and isinstance(m["git"]["dirty"], bool)
