"""The terminal: tables whose numbers never wrap, and the libraries' chatter kept off promptlab's output."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table


def print_rows(header: list[str], body: list[list[str]], title: str,
               left: Callable[[int, str], bool] = lambda i, h: i < 2) -> None:
    """A table of strings; columns for which `left(index, name)` holds are left-aligned, the numbers right."""
    table = Table(title=title)
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if left(i, h) else "right",
                         min_width=max((len(r[i]) for r in body), default=0))
    for r in body:
        table.add_row(*r)
    print_wide(table)


def print_wide(table: Any) -> None:
    """Cells never wrap or shrink (a number cut in two misreads; headers may wrap): the console is made at
    least as wide as the widest cell of every column needs."""
    wide = Console(width=1000)
    need = wide.measure(table, options=wide.options).maximum  # rich crops (not wraps) below this with min_width
    Console(width=max(120, Console().width, need)).print(table)


def quiet_libraries() -> None:
    """Library chatter (weight-loading bars, deprecation notices) would bury promptlab's own output."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*base_model_name_or_path.*")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        from huggingface_hub.utils import logging as hub_logging

        hub_logging.set_verbosity_error()  # its retry notices: ten lines before a failed download's one-line error
    except ImportError:
        pass


# Whether stderr is someone's terminal: None asks stderr itself (progress bars and the plan line are for a person
# watching, not for logs or pipes); tests set it to True to see what a terminal would.
TERMINAL: bool | None = None
REDRAW_SECONDS = 0.1  # tqdm's default: a bar redraws at most this often; tests set 0 to see every batch


def on_terminal() -> bool:
    return sys.stderr.isatty() if TERMINAL is None else TERMINAL


def progress(total: int, desc: str, unit: str = "ex", initial: int = 0, show: bool = True) -> Any:
    """A tqdm bar on stderr (evaluation's, generation's, training's), shown only at a terminal (disable=None: tqdm
    asks stderr) and where `show` holds (training: rank 0 of a distributed run)."""
    from tqdm.auto import tqdm  # tqdm is loaded only by the commands that draw a bar

    return tqdm(total=total, desc=desc, unit=unit, initial=initial, leave=False, file=sys.stderr,
                mininterval=REDRAW_SECONDS, miniters=1,
                disable=True if not show else None if TERMINAL is None else not TERMINAL)
