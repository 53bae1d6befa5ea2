import os as _os
from importlib.metadata import version as _v

# torch's OpenMP threads (GNU libgomp) spin ~300,000 rounds waiting for work before they sleep. On a machine
# shared with another torch process that spinning takes the cores the other one needs; a process alone runs
# as fast with fewer rounds (bench/README.md, "Threads on a shared machine", has the timings). libgomp reads
# this when torch loads, so it is set before anything imports torch; a value the user set wins.
_os.environ.setdefault("GOMP_SPINCOUNT", "10000")

__version__ = _v("promptlab")
