"""The benchmark suite (bench/run.py) runs end to end on a tiny T5, so it cannot rot. No timing assertions:
these check that every benchmark produces well-formed records and that the README table is written."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT.parent / "shared" / "peer" / "seed_recipe.py"
DATA = ROOT.parent / "shared" / "data" / "hotpotqa" / "hotpot_dev_distractor_v1.0-299.json"

pytestmark = pytest.mark.skipif(not (SEED.is_file() and DATA.is_file()),
                                reason="needs ../shared/peer/seed_recipe.py and ../shared/data/hotpotqa")


def _bench():
    spec = importlib.util.spec_from_file_location("promptlab_bench", ROOT / "bench" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the file executes
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory):
    import torch

    bench = _bench()
    tmp = tmp_path_factory.mktemp("bench")
    readme = tmp / "README.md"
    readme.write_text("# Benchmarks\n\n## Serving\n\nkept as is\n")
    threads = torch.get_num_threads()
    try:
        docs = bench.run_suite(list(bench.BENCHES), size="tiny", repeats=1, threads=1, data=str(DATA),
                               results=tmp / "results", readme=readme, work=tmp / "work", inprocess=True)
    finally:
        torch.set_num_threads(threads)
    return bench, docs, tmp, readme


def test_every_benchmark_writes_well_formed_records(suite):
    bench, docs, tmp, _ = suite
    assert set(docs) == {name for name, _ in bench.BENCHES.values()}
    ids = set()
    for name, doc in docs.items():
        on_disk = json.loads((tmp / "results" / f"{name}.json").read_text())
        assert on_disk["records"] == json.loads(json.dumps(doc["records"]))
        assert doc["machine"]["torch_threads"] == 1 and doc["versions"]["torch"]
        assert len(doc["load_average"]["start"]) == 3
        for r in doc["records"]:
            ids.add(r["id"])
            for key in ("id", "ratio", "target", "median", "min", "max", "repeats", "command"):
                assert key in r, (name, key)
            assert r["repeats"] == 1 and r["min"] <= r["ratio"] <= r["max"]
            assert r["ratio"] > 0 and r["met"] in (True, False, None)
            assert r["command"]["promptlab"] and r["command"]["baseline"]
    assert ids == {"P1", "P2", "P3", "P4", "P5"}


def test_p1_compares_the_same_questions_and_records_bf16_agreement(suite):
    _, docs, _, _ = suite
    main, bf16 = docs["p1_generation"]["records"]
    assert main["target"] == bf16["target"] == ">= 10"
    assert main["questions"] == main["promptlab_runs"][0]["examples"] == main["baseline_runs"][0]["eval_examples"]
    assert bf16["bf16_runs"][0]["examples"] == main["questions"] and "--dtype bfloat16" in bf16["command"]["promptlab"]
    agree = bf16["agreement_with_fp32"]
    assert 0 <= agree["identical"] <= 1 and 0 <= agree["mean_f1"] <= 1
    assert "predictions" not in main["promptlab_runs"][0]  # answers are compared, not stored


def test_p2_p3_train_the_same_number_of_steps(suite):
    _, docs, _, _ = suite
    speed = docs["p2_prompt_tuning_training"]["records"][0]
    assert speed["promptlab_runs"][0]["steps"] == speed["baseline_runs"][0]["steps"] == speed["steps"]
    p3 = docs["p3_prompt_tuning_vs_full_finetune"]["records"][0]
    assert p3["prompt_tuning_runs"][0]["steps"] == p3["full_finetune_runs"][0]["steps"] == p3["steps"]


def test_p4_counts_flops_and_measures_the_machine(suite):
    _, docs, _, _ = suite
    r = docs["p4_flops_utilisation"]["records"][0]
    assert r["step_flops"] > 0 and 0 < r["ratio"]
    assert r["matmul"]["median"] > 0


def test_readme_table_is_written_and_other_sections_kept(suite):
    bench, _, _, readme = suite
    text = readme.read_text()
    assert "## Serving\n\nkept as is" in text
    block = text.split(bench.MARK_START, 1)[1].split(bench.MARK_END, 1)[0]
    assert block.count("| P") >= 5 and "thread(s) per process" in block
    bench.write_table(suite[2] / "results", readme)  # rewriting replaces the block, never duplicates it
    assert readme.read_text().count(bench.MARK_START) == 1


def test_gpu_check_says_so_without_cuda_and_runs_its_code_on_the_cpu():
    """bench/gpu_check.py: one line and exit 2 without CUDA; --cpu-smoke runs the same train/eval/serve/device
    checks on a tiny model on the CPU."""
    import subprocess

    script = str(Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py")
    if not torch.cuda.is_available():
        proc = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no CUDA device" in proc.stderr
    proc = subprocess.run([sys.executable, script, "--cpu-smoke"], capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert report["serving_equals_offline"] and report["devices_seen"] == ["cpu"]
    assert {r["steps"] for r in report["runs"].values()} == {4}
