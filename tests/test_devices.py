"""One device policy: --device/--dtype resolution, one-line errors, and every batch built where the model lives.

No GPU here, so the batches are checked on the `meta` device: the frozen model (and PEFT's prompt, which PEFT puts
beside it) moves there, and a hook on the model's forward records the device of every tensor it is given. A tensor
built on the CPU shows up as `cpu` (or fails against meta weights), whichever code path made it.
"""

from __future__ import annotations

import json

import pytest
import torch

from promptlab.backbones import from_pretrained_objects, load_backbone
from promptlab.devices import resolve_device, resolve_dtype
from promptlab.errors import ConfigError
from promptlab.methods import get_method
from promptlab.methods.readout import Readout
from promptlab.tasks import get_task
from promptlab.tasks.base import Example

NO_CUDA = not torch.cuda.is_available()


def test_auto_is_the_cpu_here_and_its_dtype_float32_while_a_gpu_gets_bf16():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("float32", torch.device("cuda")) == torch.float32


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
@pytest.mark.parametrize("spec", ["cuda", "cuda:1"])
def test_asking_for_cuda_without_it_is_one_line(spec, tiny_models, run_cli, tmp_path):
    with pytest.raises(ConfigError, match="has none"):
        resolve_device(spec)
    code, _, err = run_cli("eval", "--task", "sentiment", "--model", tiny_models["encoder"], "--method", "zero-shot",
                           "--device", spec, "--out", tmp_path / "x")
    assert code == 2 and err.count("\n") == 1 and "--device cpu" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("command", ["eval", "serve"])
def test_a_device_that_is_no_device_is_one_line(command, tiny_models, run_cli, tmp_path):
    argv = (["eval", "--task", "sentiment", "--method", "zero-shot", "--out", tmp_path / "x"] if command == "eval"
            else ["serve", "--prompt", "zs=zero-shot:sentiment", "--port", "0"])
    code, _, err = run_cli(*argv, "--model", tiny_models["encoder"], "--device", "gpu0")
    assert code == 2 and err.count("\n") == 1 and "cuda:N" in err, err


def test_the_run_records_its_device_and_dtype(tiny_models, run_cli, tmp_path):
    code, _, err = run_cli("eval", "--task", "sentiment", "--model", tiny_models["encoder"], "--method", "zero-shot",
                           "--limit", "4", "--device", "cpu", "--out", tmp_path / "run")
    assert code == 0, err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["device"] == {"device": "cpu", "dtype": "float32", "name": "cpu"}
    assert "device: cpu" in (tmp_path / "run" / "config.yaml").read_text()


@pytest.fixture
def values_free_masks(monkeypatch):
    """transformers skips an all-ones bidirectional mask after reading its values (`.all()`), which meta tensors do
    not have: never skipping gives the same outputs, computed without reading values."""
    import transformers.masking_utils as mu

    monkeypatch.setattr(mu, "_ignore_bidirectional_mask_sdpa", lambda *a, **k: False)


def _on_meta(backbone):
    """The backbone's model on the meta device, and the devices of every tensor its forward receives."""
    # eager attention: sdpa's mask shortcuts read the mask's values (`.all()`), which meta tensors do not have
    backbone.model.set_attn_implementation("eager")
    backbone.model.to("meta")
    seen: list[tuple[str, torch.device]] = []

    def hook(module, args, kwargs):
        seen.extend((f"arg{i}", a.device) for i, a in enumerate(args) if isinstance(a, torch.Tensor))
        seen.extend((k, v.device) for k, v in kwargs.items() if isinstance(v, torch.Tensor))

    backbone.model.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


EXAMPLES = [Example("a", {"text": "the food was great"}, 2, ("great",)),
            Example("b", {"text": "terrible film"}, 0, ("awful",))]


@pytest.mark.parametrize("kind", ["encoder", "seq2seq", "causal"])
@pytest.mark.parametrize("method", [None, "prompt-tuning", "prefix-tuning"])
def test_training_batches_are_built_where_the_model_lives(kind, method, tiny_models, values_free_masks):
    from peft import get_peft_model

    bb = load_backbone(str(tiny_models[kind]))
    task = get_task("sentiment")
    readout = Readout(bb, task)  # anchors made on the CPU before the move: the loss must carry them over
    seen = _on_meta(bb)
    assert bb.device == torch.device("meta")
    model = bb.model
    if method:
        m = get_method(method)
        model = get_peft_model(bb.model, m.peft_config(bb, 3))
        assert {p.device.type for p in model.parameters() if p.requires_grad} == {"meta"}
    inputs = [ex.fields["text"] for ex in EXAMPLES]
    loss = readout.loss(model, inputs, EXAMPLES)
    assert loss.device.type == "meta" and seen
    assert {d.type for _, d in seen} == {"meta"}, seen


@pytest.mark.parametrize("kind", ["seq2seq", "causal"])
def test_scoring_and_text_batches_are_built_where_the_model_lives(kind, tiny_models, values_free_masks):
    bb = load_backbone(str(tiny_models[kind]))
    seen = _on_meta(bb)
    batch = bb.lm_batch(["the food was great", "terrible film"], ["positive", "negative"])
    assert {t.device.type for t in batch.values()} == {"meta"}
    assert bb.sequence_logprob(batch).device.type == "meta"
    hotpot = Readout(bb, get_task("hotpotqa"))  # a text task: the loss is the answer's tokens
    hotpot.loss(bb.model, ["question: who? context: nobody"], [Example("q", {}, None, ("nobody",))])
    assert {d.type for _, d in seen} == {"meta"}, seen


def test_full_finetune_trains_a_float32_copy_when_the_dtype_is_auto(tiny_models):
    """On a GPU, --dtype auto loads the frozen weights in bf16; full fine-tuning's copy must train in float32."""
    from transformers import AutoModel, AutoTokenizer

    from promptlab.methods.adapted import unfrozen_copy

    path = str(tiny_models["encoder"])
    bb = from_pretrained_objects("bf16", AutoModel.from_pretrained(path, dtype=torch.bfloat16),
                                 AutoTokenizer.from_pretrained(path))
    copy = unfrozen_copy(bb.model, float32=True)
    assert {p.dtype for p in copy.parameters()} == {torch.float32}
    assert {p.dtype for p in bb.model.parameters()} == {torch.bfloat16}  # the shared backbone is untouched


def test_a_tokenizer_that_reads_text_as_nothing_is_refused(tmp_path, run_cli):
    """transformers 5 loads a qwen2 directory's tokenizer as Qwen2Tokenizer: another family's files beside the
    weights give one that encodes every text to no tokens, and every answer would be the same."""
    from transformers import ByT5Tokenizer, Qwen2Config, Qwen2ForCausalLM

    Qwen2ForCausalLM(Qwen2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                 intermediate_size=64, vocab_size=400)).save_pretrained(tmp_path / "m")
    ByT5Tokenizer().save_pretrained(tmp_path / "m")
    run_cli("tasks")  # drain the shard-writing progress bar from the captured stderr
    code, _, err = run_cli("eval", "--task", "sentiment", "--method", "zero-shot", "--model", tmp_path / "m",
                           "--out", tmp_path / "x")
    assert code == 2 and err.count("\n") == 1 and "no tokens" in err and "tokenizer.json" in err, err
    assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def prompt_run(tiny_models, tmp_path_factory):
    from promptlab.cli import main

    out = tmp_path_factory.mktemp("dev") / "pt"
    assert main(["train", "--task", "sentiment", "--method", "prompt-tuning", "--model", str(tiny_models["encoder"]),
                 "--train-size", "8", "--epochs", "1", "--virtual-tokens", "2", "--limit", "4", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("command", ["inspect", "transfer"])
def test_inspect_and_transfer_take_device(command, prompt_run, tiny_models, run_cli, tmp_path):
    def argv(device, out):
        if command == "inspect":
            return ["inspect", prompt_run, "--json", "--device", device]
        return ["transfer", "--model", tiny_models["encoder"], "--prompt", f"pt={prompt_run}", "--limit", "4",
                "--device", device, "--out", out]

    code, out, err = run_cli(*argv("cpu", tmp_path / "cpu"))
    assert code == 0, err
    if command == "inspect":
        assert json.loads(out)["method"] == "prompt-tuning"
    else:
        assert (tmp_path / "cpu" / "transfer.json").is_file()
    if NO_CUDA:
        code, _, err = run_cli(*argv("cuda", tmp_path / "cuda"))
        assert code == 2 and err.count("\n") == 1 and "--device cpu" in err and "Traceback" not in err, err
        assert not (tmp_path / "cuda").exists()
