"""`compare`: every method on the same data (`compare`), and with `--train-sizes` every method at every
training-set size -> the data-efficiency curve (`run`).

Each point is one ordinary run (`pipeline.run_one`) written to `OUT/n{size}-s{seed}/{method}/`, so any point
can be repeated alone with `promptlab train --train-size SIZE --seed SEED`. Sizes count labelled training
examples in total over all classes (what `--train-size` means), drawn as a seeded sample of the task's
training pool; the evaluation set and the dev slice are the same for every point (fixed carve seed), so
points differ only in what they learn from. Small sizes are noisy, so sizes up to `SMALL_SIZE` run
`--seeds` seeds (default 3); larger ones run one.

A point whose run already exists with the same config is not run again: an interrupted sweep continues
where it stopped. A point that fails with a user-level error (linear-probe or setfit on a sample holding a
single class) is recorded in `OUT/skipped.json` and shown in the report; the others go on.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

from .checkpoints import discard
from .config import RunConfig, check_schedule, from_dict
from .errors import ConfigError, PromptlabError
from .methods import get_method
from .pipeline import load_data, run_one
from .report import write_report
from .runs import REPORT_FILES, check_writable, staged
from .training import is_main_process

SMALL_SIZE = 128
DEFAULT_SEEDS = 3
SKIPPED_FILE = "skipped.json"
_SWEEP_FILES = {*REPORT_FILES, SKIPPED_FILE}


def check_methods(names: list[str], seeds: int | None, sizes: str | None) -> None:
    """compare's --methods (and --seeds), before any loading: empty, unknown or repeated names fail here."""
    if not names:
        raise ConfigError("--methods is empty; name at least one method, e.g. zero-shot,prompt-tuning")
    for n in names:
        get_method(n)  # unknown names fail before any work
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # both would write the same run directory
        raise ConfigError(f"--methods names '{twice[0]}' twice; list each method once")
    if seeds is not None and not sizes:
        raise ConfigError("--seeds sets the seeds per size of a --train-sizes curve; add --train-sizes, or use "
                          "--seed for one comparison")


def check_flags(names: list[str], cfg: RunConfig, given: set[str]) -> None:
    """A comparison keeps a flag that at least one of its methods reads (the others run without it); one that
    none reads is refused, as train and eval refuse it for their one method, and so is a value that conflicts."""
    check_schedule(cfg, given)
    refused = {n: {r.setting: r for r in get_method(n).refusals(cfg, given)} for n in names}
    for setting in dict.fromkeys(s for per in refused.values() for s in per):
        by = [per[setting] for per in refused.values() if setting in per]
        conflict = next((r for r in by if r.conflict), None)
        if len(by) < len(names) and conflict is None:
            continue
        if conflict is not None or len(names) == 1:
            raise ConfigError((conflict or by[0]).reason)
        raise ConfigError(f"--{setting.replace('_', '-')} is read by none of the compared methods "
                          f"({', '.join(names)}); drop the flag, or compare a method that reads it")


def compare(cfg: RunConfig, names: list[str], out: Path, task: Any, data: Any, backbone: Any, checkpoint: Any,
            title: str, log: Any = print) -> list[Path] | None:
    """Every method on the same data into OUT/{method}, and the report. All methods or none: a failure part-way
    leaves OUT as it was (and each method's checkpoints under `checkpoint.dir`, so a rerun continues). Returns
    the run directories; None on every process of a distributed run but rank 0, which alone writes."""
    for n in names:
        get_method(n).check(backbone, task)
    main = is_main_process()  # under torchrun / accelerate launch every process trains; rank 0 writes
    with staged(out) if main else nullcontext(None) as stage:
        for k, n in enumerate(names, 1):
            run_cfg = from_dict(RunConfig, {**cfg.to_dict(), "method": n}, "config")
            if main:  # then its plan, training and evaluation bars (at a terminal) follow under this line
                log(f"· [{k}/{len(names)}] {n} …")
            run_one(run_cfg, backbone, task, data, stage / n if stage else None,
                    checkpoint=replace(checkpoint, dir=checkpoint.dir / n))
        if stage:
            write_report([stage / n for n in names], stage, title)
    if not main:
        return None
    discard(checkpoint.dir)
    return [out / n for n in names]


def parse_sizes(text: str) -> list[int]:
    sizes = []
    for part in str(text).split(","):
        part = part.strip().replace("_", "")
        if not part:
            continue
        if not part.isdigit() or int(part) <= 0:
            raise ConfigError(f"--train-sizes: '{part}' is not a positive whole number; use e.g. 8,32,128,512,2000")
        sizes.append(int(part))
    if not sizes:
        raise ConfigError("--train-sizes is empty; use e.g. 8,32,128,512,2000")
    return sorted(set(sizes))


def plan(sizes: list[int], seeds: int, base_seed: int) -> list[tuple[int, int]]:
    """(size, seed) points: `seeds` seeds for sizes <= SMALL_SIZE, one for the rest."""
    if seeds <= 0:
        raise ConfigError(f"--seeds must be a positive number, got {seeds}; use 1 or more")
    return [(n, base_seed + k) for n in sizes for k in range(seeds if n <= SMALL_SIZE else 1)]


def point_dir(out: Path, size: int, seed: int) -> Path:
    return out / f"n{size}-s{seed}"


def check_sweep_out(out: Path) -> None:
    """--out must be new, empty, or an earlier sweep (which is then continued)."""
    check_writable(out, inside=True)
    if out.is_dir():
        strangers = [p.name for p in out.iterdir() if not p.name.startswith(".") and p.name not in _SWEEP_FILES
                     and not (p.is_dir() and p.name.startswith("n") and "-s" in p.name)]
        if strangers:
            raise ConfigError(f"--out '{out}' holds '{strangers[0]}', so it is not a --train-sizes sweep; choose "
                              "another path")


def point_config(cfg: RunConfig, method: str, size: int, seed: int) -> RunConfig:
    d = cfg.to_dict()
    d.update(method=method, seed=seed)
    d["train"]["train_size"] = size
    return from_dict(RunConfig, d, "config")


def _done(run_dir: Path, cfg: RunConfig) -> bool:
    """A finished run of exactly this config (a changed flag reruns the point)."""
    try:
        return (run_dir / "metrics.json").is_file() and (run_dir / "config.yaml").read_text() == cfg.to_yaml()
    except OSError:
        return False


def run(cfg: RunConfig, names: list[str], out: Path, sizes: list[int], seeds: int, task: Any, backbone: Any,
        log: Any = print) -> list[Path]:
    """Run every (size, seed, method) point not already done; return the run directories that exist."""
    points = plan(sizes, seeds, cfg.seed)
    data = {}
    for size, seed in points:  # resolve every sample first: a size beyond the pool fails before any training
        data[(size, seed)] = load_data(task, point_config(cfg, names[0], size, seed))
    out.mkdir(parents=True, exist_ok=True)
    skipped_path = out / SKIPPED_FILE
    skipped: dict[str, str] = json.loads(skipped_path.read_text()) if skipped_path.is_file() else {}
    total, k, dirs, errors = len(points) * len(names), 0, [], 0
    t_all = time.perf_counter()
    for size, seed in points:
        for name in names:
            k += 1
            run_cfg = point_config(cfg, name, size, seed)
            run_dir = point_dir(out, size, seed) / name
            key = f"{run_dir.parent.name}/{name}"
            if _done(run_dir, run_cfg):
                log(f"· [{k}/{total}] n={size} seed={seed} {name}: done earlier, kept")
                dirs.append(run_dir)
                continue
            log(f"· [{k}/{total}] n={size} seed={seed} {name} …")
            t0 = time.perf_counter()
            try:
                res = run_one(run_cfg, backbone, task, data[(size, seed)], run_dir)
            except PromptlabError as e:  # one point that cannot run must not sink the whole curve
                errors += 1
                skipped[key] = str(e)
                log(f"  skipped: {e}")
                continue
            skipped.pop(key, None)
            dirs.append(run_dir)
            m = res.metrics
            first = next(iter(m["metrics"]), None)
            score = f"{first} {100 * m['metrics'][first]:.1f}" if first else ""
            log(f"  {score} · {time.perf_counter() - t0:.1f} s (sweep {time.perf_counter() - t_all:.0f} s)")
    if skipped:
        skipped_path.write_text(json.dumps(skipped, indent=2))
    elif skipped_path.exists():
        skipped_path.unlink()
    if not dirs:
        first = next(iter(skipped.values()), "no runs")
        raise ConfigError(f"every point of the sweep failed; the first: {first}")
    return dirs
