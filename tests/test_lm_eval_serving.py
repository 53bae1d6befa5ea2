"""lm-eval's `local-completions` model scores a choice task through `promptlab serve`'s /v1/completions (echo +
logprobs) and agrees with `promptlab eval --prompt` of the same soft prompt, example by example.

What the two sums are: lm-eval scores `context + " " + choice` by the echoed log-probs after the context, dropping
the last (the one generated token). The server tokenizes a prompt as its tokenizer does by default, which for the
tiny model's ByT5 tokenizer appends EOS, so lm-eval's number is log p(" " + choice + EOS | soft prompt, context).
promptlab's choice score under `--scoring eos` is the same sum, so the prompt is trained and evaluated with it.
Under the default `--scoring lmeval`, promptlab splits (context, continuation) as lm-eval's `hf` model does
(tests/test_lmeval_parity.py), and with this EOS-appending tokenizer — one no causal LM ships — that sum is not
the one local-completions reads off the echo (measured: one example's softmax 0.99112 against 0.99093).
"""

from __future__ import annotations

import json
import math

import pytest
from test_serving import live_server

from promptlab.backbones import load_backbone
from promptlab.cli import main
from promptlab.serving.app import create_app
from promptlab.serving.server import build_state
from promptlab.tasks.base import Example

TASK_YAML = """task: promptlab_served
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
target_delimiter: " "
metric_list:
  - metric: acc
"""


@pytest.mark.slow
def test_lm_eval_local_completions_matches_promptlab_eval(tiny_models, tmp_path, monkeypatch):
    lm_eval = pytest.importorskip("lm_eval")
    pytest.importorskip("tenacity", reason="lm-eval's API models need lm-eval[api] (tenacity)")
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    model = tiny_models["causal"]
    run = tmp_path / "run"
    assert main(["train", "--task", "sentiment", "--model", str(model), "--method", "prompt-tuning", "--train-size",
                 "32", "--epochs", "2", "--virtual-tokens", "4", "--scoring", "eos", "--out", str(run)]) == 0
    assert main(["eval", "--prompt", str(run), "--out", str(tmp_path / "eval")]) == 0
    offline = [json.loads(x) for x in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()][:40]

    state = build_state(load_backbone(str(model)), [f"pt={run}"])
    s = state.prompts["pt"]
    labels = list(s.task.labels)
    texts = s.render([Example(r["id"], {"text": r["input"]}) for r in offline])  # the task's template, as eval applies it
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"context": t, "choices": list(s.task.verbalizers),
                                        "label": labels.index(r["gold"])}) + "\n" for t, r in zip(texts, offline)))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "served.yaml").write_text(TASK_YAML.format(data=data))

    with live_server(create_app(state)) as (url, _, _):
        res = lm_eval.simple_evaluate(
            model="local-completions",
            model_args=f"base_url={url}/v1/completions,model=pt,tokenizer_backend=huggingface,tokenizer={model},"
                       "tokenized_requests=False",
            tasks=["promptlab_served"], task_manager=TaskManager(include_path=str(tmp_path / "tasks")),
            log_samples=True, random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
    samples = sorted(res["samples"]["promptlab_served"], key=lambda x: x["doc_id"])
    assert len(samples) == len(offline) == 40
    for smp, want in zip(samples, offline):
        ll = [float(r[0]) for r in smp["filtered_resps"]]  # lm-eval's log-likelihood of each choice
        best = max(range(len(ll)), key=ll.__getitem__)
        assert labels[best] == want["prediction"], (smp["doc_id"], ll, want)
        z = math.fsum(math.exp(v - ll[best]) for v in ll)
        assert 1 / z == pytest.approx(want["score"], abs=1e-4)  # the softmax over choices promptlab reports
    acc = res["results"]["promptlab_served"]["acc,none"]
    assert acc == pytest.approx(sum(r["correct"] for r in offline) / len(offline))
