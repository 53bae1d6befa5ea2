"""Sampling for the OpenAI endpoints: temperature and nucleus (`top_p`) per row, each row drawing from its own
`torch.Generator`.

Written here rather than taken from transformers: `generate(do_sample=True)` draws for the whole batch from the
global RNG (`torch.multinomial`), so a row's text would depend on what else shares its batch and on every other
request before it. One generator per row, seeded from the request's `seed` and the row's index, gives a request
the same text alone or inside any mixed batch. The draws run on the CPU, so they do not depend on the device.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor


@dataclass
class Sampler:
    temperature: float
    top_p: float
    generator: torch.Generator

    @classmethod
    def for_rows(cls, temperature: float | None, top_p: float | None, seed: int | None,
                 rows: int) -> list[Sampler | None]:
        """One sampler per row, or None for every row when decoding is greedy (temperature 0 or absent)."""
        if not temperature:
            return [None] * rows
        base = random.getrandbits(63) if seed is None else seed
        out: list[Sampler | None] = []
        for i in range(rows):
            digest = hashlib.blake2b(f"{base}:{i}".encode(), digest_size=8).digest()
            g = torch.Generator().manual_seed(int.from_bytes(digest, "big") >> 1)
            out.append(cls(float(temperature), 1.0 if top_p is None else float(top_p), g))
        return out

    def draw(self, logits: torch.Tensor) -> int:
        """One token from softmax(logits / T), restricted to the smallest most-likely set whose mass reaches top_p."""
        probs = torch.softmax(logits.detach().float().cpu() / self.temperature, dim=-1)
        p, idx = probs.sort(descending=True, stable=True)
        p = p * ((p.cumsum(0) - p) < self.top_p)  # the most likely token is always kept
        c = p.cumsum(0)
        u = torch.rand((), generator=self.generator) * c[-1]
        k = int(torch.searchsorted(c, u.reshape(1), right=True).clamp(max=c.shape[0] - 1))
        return int(idx[k])


def pick(logits: torch.Tensor, samplers: list[Sampler | None] | None) -> torch.Tensor:
    """The next token per row: argmax, or the row's sampler's draw. logits [B, V] -> [B]"""
    nxt = logits.argmax(-1)
    for b, s in enumerate(samplers or []):
        if s is not None:
            nxt[b] = s.draw(logits[b])
    return nxt


class SampledLogits(LogitsProcessor):
    """For `generate` in greedy mode: a sampled row's drawn token gets the only finite score, so greedy takes it."""

    def __init__(self, samplers: list[Sampler | None]) -> None:
        self.samplers = samplers

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.clone()
        for b, s in enumerate(self.samplers):
            if s is not None:
                tok = s.draw(scores[b])
                scores[b] = float("-inf")
                scores[b, tok] = 0.0
        return scores
