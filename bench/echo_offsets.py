"""Echoed logprobs' text_offset: the offset mapping against decoding every prefix, on one long prompt.

    PYTHONPATH=src:tests .venv/bin/python bench/echo_offsets.py
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from lmeval_tiny import save_tokenizer
from transformers import AutoTokenizer

from promptlab.serving.openai_api import prefix_lengths


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        save_tokenizer(Path(d), "gpt2")
        tok = AutoTokenizer.from_pretrained(d)
    ids = tok("a gorgeous, witty film. It was great and the movie " * 40)["input_ids"]
    runs = {"offset mapping": lambda: prefix_lengths(tok, ids),
            "every prefix": lambda: [len(tok.decode(ids[:k], skip_special_tokens=True)) for k in range(len(ids))]}
    times = {name: statistics.median(_time(f) for _ in range(5)) for name, f in runs.items()}
    assert runs["offset mapping"]() == runs["every prefix"]()
    print(f"{len(ids)} tokens, median of 5: " + ", ".join(f"{n} {t * 1e3:.1f} ms" for n, t in times.items())
          + f"; ratio {times['every prefix'] / times['offset mapping']:.0f}x")


def _time(f) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
