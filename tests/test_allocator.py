"""keep_freed_memory: big tensors freed and allocated again come back without the kernel faulting them in anew."""

import subprocess
import sys

import pytest

from promptlab.allocator import user_chose_allocator

# Allocate, touch and free a 64 MB tensor 20 times; count the minor page faults of the loop. The first ~8 rounds
# fault either way: torch asks for 64-byte-aligned blocks, and glibc's memalign cannot place one in the freed
# block of exactly the same size until freed blocks have coalesced.
PROBE = """
import resource, sys, torch
from promptlab.allocator import keep_freed_memory
ok = keep_freed_memory() if sys.argv[1] == "tuned" else None
for _ in range(10):
    torch.ones(16 * 2**20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.ones(16 * 2**20)
print(ok, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}  # no MALLOC_* from the caller's environment
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env=env)
    ok, faults = out.stdout.split()
    return ok, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_freed_blocks_are_reused_without_page_faults():
    ok, tuned = _faults("tuned")
    _, plain = _faults("plain")
    assert ok == "True"
    # 20 × 64 MB = 327,680 pages faulted in by plain glibc (mmap/munmap per tensor); reused heap pages fault ~never.
    assert plain > 100_000
    assert tuned < plain / 50


def test_user_allocator_choice_is_respected():
    assert user_chose_allocator({"MALLOC_ARENA_MAX": "2"})
    assert user_chose_allocator({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"})
    assert not user_chose_allocator({"PATH": "/usr/bin"})


def test_only_inference_commands_keep_freed_memory(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    from promptlab import cli

    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(1))
    assert cli.main(["eval", "--task", "sentiment"]) == 2  # parsed, then refused: neither --method nor --prompt
    assert calls == [1]
    assert cli.main(["tasks"]) == 0  # neither these nor training (peak memory) change the allocator
    assert cli.main(["train", "--task", "sentiment", "--method", "zero-shot", "--out", "unused"]) == 2  # refused
    assert calls == [1]
