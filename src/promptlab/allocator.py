"""Keep freed tensor memory in the process instead of handing it back to the kernel.

glibc's malloc serves every block above its mmap threshold (32 MB at most) with a fresh mmap and returns it with
munmap on free. A t5-small encoder pass over 32 × 512 tokens allocates and frees dozens of such blocks (each
feed-forward activation is 70 MB in bf16), so the same memory is faulted in and zeroed by the kernel again and
again, a noticeable share of a HotpotQA `eval` (bench/README.md, "What changed"). jemalloc or tcmalloc via
LD_PRELOAD fix this too (Intel's PyTorch CPU tuning guide recommends them), but they are not installed with pip
and must be set before the process starts; mallopt can be called from inside it. Outputs do not change: only
where the bytes come from does.

Only commands that run a frozen model forward (eval, predict, serve, transfer) set it. In training the same
setting makes a prompt-tuning step faster but raises its peak RSS (bench P2's job; numbers in bench/README.md):
freed activations of many sizes fragment a heap that is never trimmed, where mmap gave each big block back.
Peak memory is what prompt tuning is chosen for, so training keeps glibc's defaults.
"""

from __future__ import annotations

import ctypes
import os

INFERENCE_COMMANDS = ("eval", "predict", "serve", "transfer")

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4


def user_chose_allocator(environ: dict[str, str] | os._Environ = os.environ) -> bool:
    """A MALLOC_* setting or a preloaded allocator is the user's choice; leave it alone."""
    return any(k.startswith("MALLOC_") for k in environ) or any(
        name in environ.get("LD_PRELOAD", "") for name in ("jemalloc", "tcmalloc", "mimalloc"))


def keep_freed_memory() -> bool:
    """Serve large blocks from the heap and never trim it. Returns whether glibc accepted the settings."""
    if user_chose_allocator():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # glibc only; musl and macOS have no mallopt
    except (AttributeError, OSError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # Inference peaks barely move (bench P1's eval, bench/README.md); memory freed after the peak is kept for
    # reuse rather than returned, the trade every long-running tensor server makes.
    return all(mallopt(opt, val) == 1 for opt, val in ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**30),
                                                         (M_TOP_PAD, 2**28)))
