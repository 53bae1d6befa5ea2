"""OpenMP threads that wait for work sleep soon (GOMP_SPINCOUNT), so two torch processes can share the cores."""

import os
import subprocess
import sys

# libgomp reads the setting when torch loads: importing promptlab first must be enough.
PROBE = "import os, promptlab, torch; print(os.environ.get('GOMP_SPINCOUNT'))"


def _spincount(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


def test_promptlab_shortens_openmp_spinning_before_torch_loads():
    assert _spincount() == "10000"


def test_a_spincount_the_user_set_wins():
    assert _spincount(GOMP_SPINCOUNT="77") == "77"
