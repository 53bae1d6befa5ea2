"""The shape of the code: one-way imports, small rooms, and a new method or setting declared in one place."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest

from promptlab.backbones import Backbone
from promptlab.config import RunConfig
from promptlab.methods import get_method, method_names, register
from promptlab.methods.adapted import AdaptedMethod
from promptlab.methods.registry import _REGISTRY
from promptlab.methods.soft import SoftMethod

SRC = Path(__file__).resolve().parents[1] / "src"
# Entry points whose imports are deferred on purpose: `promptlab --help` and a mistyped flag answer in a fraction
# of a second instead of loading torch first.
DEFERRING = {"promptlab.cli", "promptlab.config"}


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted((SRC / "promptlab").rglob("*.py")):
        name = ".".join(f.relative_to(SRC).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = f
    return out


def _targets(mods: dict[str, Path], mod: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in mods}
    pkg = mod if mods[mod].name == "__init__.py" else mod.rsplit(".", 1)[0]
    for _ in range(max(node.level - 1, 0)):
        pkg = pkg.rsplit(".", 1)[0]
    base = (f"{pkg}.{node.module}" if node.module else pkg) if node.level else (node.module or "")
    return {f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names} & set(mods)


def _imports(mods: dict[str, Path]) -> tuple[dict[str, set[str]], list[tuple[str, str]]]:
    """Module-level imports between promptlab modules (typing-only blocks left out), and call-time ones."""
    graph: dict[str, set[str]] = {}
    late: list[tuple[str, str]] = []
    for mod, f in mods.items():
        tree = ast.parse(f.read_text())
        edges: set[str] = set()
        for node in tree.body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    edges |= _targets(mods, mod, sub)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                late += [(mod, t) for sub in ast.walk(node) if isinstance(sub, (ast.Import, ast.ImportFrom))
                         for t in _targets(mods, mod, sub)]
        graph[mod] = edges - {mod}
    return graph, late


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        path.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                return path[path.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        state[v] = 2
        path.pop()
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_no_import_cycle_between_promptlab_modules():
    graph, _ = _imports(_modules())
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_no_module_imports_promptlab_code_at_call_time_except_the_light_entry_points():
    _, late = _imports(_modules())
    assert [(m, t) for m, t in late if m not in DEFERRING] == []


def test_no_source_file_is_over_500_lines():
    long = {str(f.relative_to(SRC)): n for f in (SRC / "promptlab").rglob("*.py")
            if (n := len(f.read_text().splitlines())) > 500}
    assert long == {}


class _ShortPrompt(SoftMethod):
    """A soft-prompt method written as a user would add one: this class is all of it."""

    name = "test-short-prompt"
    summary = "prompt tuning's rows under another name, for the house test"
    peft_type = "PROMPT_TUNING"
    token_init = True
    optimizer, default_lr = "adamw", 0.05

    def peft_config(self, backbone: Backbone, n: int, config: RunConfig | None = None) -> Any:
        return get_method("prompt-tuning").peft_config(backbone, n, config)  # the same rows, another method


@pytest.fixture
def short_prompt():
    register(_ShortPrompt)
    yield _ShortPrompt
    _REGISTRY.pop(_ShortPrompt.name, None)


def test_a_new_soft_method_is_one_class(short_prompt, tiny_models, run_cli, tmp_path):
    assert short_prompt.name in method_names()
    code, out, _ = run_cli("methods")
    assert code == 0 and short_prompt.name in out
    run = tmp_path / "run"
    code, _, err = run_cli("train", "--task", "sentiment", "--model", tiny_models["causal"], "--method",
                           short_prompt.name, "--train-size", "16", "--epochs", "1", "--virtual-tokens", "3",
                           "--limit", "8", "--out", run)
    assert code == 0, err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method"] == short_prompt.name and metrics["family"] == "soft"
    assert metrics["trainable_params"] == 3 * 32  # 3 virtual tokens x hidden 32
    assert json.loads((run / "artifact" / "promptlab.json").read_text())["extras"]["optimizer"] == "AdamW"
    again = tmp_path / "again"
    code, _, err = run_cli("eval", "--prompt", run, "--model", tiny_models["causal"], "--limit", "8",
                           "--out", again)
    assert code == 0, err
    first, second = ((d / "predictions.jsonl").read_text().splitlines() for d in (run, again))
    assert first == second


def test_a_method_trained_by_the_loop_must_declare_its_optimizer_and_learning_rate():
    with pytest.raises(TypeError, match="declare optimizer"):
        class NoOptimizer(AdaptedMethod):
            name, family, summary = "test-no-optimizer", "soft", "lacks its optimizer"
            default_lr = 0.1
    with pytest.raises(TypeError, match="positive default_lr"):
        class NoRate(AdaptedMethod):
            name, family, summary = "test-no-rate", "soft", "lacks its learning rate"
            optimizer = "adamw"


def test_a_method_name_is_registered_once():
    class Twin(type(get_method("zero-shot"))):
        pass

    with pytest.raises(TypeError, match="registered twice"):
        register(Twin)
    assert type(get_method("zero-shot")).__name__ == "ZeroShot"


def test_each_method_declares_its_training_settings():
    """The defaults training.py used to pick by name now sit on each class (same values)."""
    expected = {"prompt-tuning": ("adafactor", 0.3), "hybrid": ("adafactor", 0.3), "p-tuning": ("adafactor", 0.3),
                "prefix-tuning": ("adamw", 1e-2), "pez": ("adamw", 0.1), "lora": ("adamw", 1e-3),
                "full-finetune": ("adamw", 3e-5)}
    got = {n: (m.optimizer, m.default_lr) for n in method_names() if isinstance(m := get_method(n), AdaptedMethod)}
    assert got == expected
    assert {n: get_method(n).peft_type for n in ("prompt-tuning", "hybrid", "pez", "prefix-tuning", "p-tuning")} == {
        "prompt-tuning": "PROMPT_TUNING", "hybrid": "PROMPT_TUNING", "pez": "PROMPT_TUNING",
        "prefix-tuning": "PREFIX_TUNING", "p-tuning": "P_TUNING"}
