"""Methods: every way to adapt a backbone to a task, registered by name (registry.py).

Importing the package imports each module in it, and each method class registers itself there: the built-in
ones first, in the order `promptlab methods` lists them (hard prompts, the search, soft prompts, pez,
baselines), then any other module dropped into this folder.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import FitContext, Method, Prediction, Predictor
from .registry import describe, get_method, load_predictor, method_names, register

_LISTING_ORDER = ("hard", "prompt_search", "soft", "pez", "baselines", "setfit_method")
for _name in (*_LISTING_ORDER, *sorted(m.name for m in pkgutil.iter_modules(__path__))):
    importlib.import_module(f"{__name__}.{_name}")

__all__ = ["FitContext", "Method", "Prediction", "Predictor", "describe", "get_method", "load_predictor",
           "method_names", "register"]
