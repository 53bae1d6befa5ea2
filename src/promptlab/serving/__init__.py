"""Serving: many prompts on one frozen backbone, in mixed batches (see engine.py), over HTTP (app.py)."""

from __future__ import annotations

from .engine import Engine
from .jobs import Answer, Job
from .registry import Servable, hard_servable, load_servable, parse_prompt_arg

__all__ = ["Answer", "Engine", "Job", "Servable", "hard_servable", "load_servable", "parse_prompt_arg"]
