"""HotpotQA loader and context policy: fixture JSON written here, tokenizers built in-process."""

import copy
import json
import random
import re
import sys
import types
from pathlib import Path
from unittest import mock

import pytest
import yaml

from promptlab.errors import DataError
from promptlab.tasks import hotpotqa as H
from promptlab.tasks.base import Template

REAL = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "hotpotqa"
    / "hotpot_dev_distractor_v1.0-299.json"
)
T5 = Template("t5", "question: {question} context: {context}")


def _filler(topic: str, n: int) -> list[str]:
    return [
        f"The {topic} archive lists record number {i} of the regional survey in great detail."
        for i in range(n)
    ]


# Gold paragraphs are never first; distractors share the question's words.
ITEMS = [
    {
        "_id": "bridge-1",
        "question": "In which city was the director of the film Moonlit Harbor born?",
        "answer": "Valdorra",
        "supporting_facts": [["Moonlit Harbor", 0], ["Elena Marwick", 1]],
        "type": "bridge",
        "level": "hard",
        "context": [
            [
                "Harbor Lights (band)",
                ["Harbor Lights is a folk band from the northern coast.", *_filler("band", 3)],
            ],
            ["Moonlit Sea", ["Moonlit Sea is a 2004 film about a fishing city.", *_filler("film", 3)]],
            ["Port Aster", ["Port Aster is a harbor city where many films were shot.", *_filler("port", 4)]],
            [
                "Moonlit Harbor",
                [
                    "Moonlit Harbor is a 1998 drama film directed by Elena Marwick.",
                    "It was shot on the western coast over six weeks.",
                    *_filler("production", 2),
                ],
            ],
            ["Tomas Reyel", ["Tomas Reyel is a cinematographer born in Port Aster.", *_filler("camera", 3)]],
            [
                "Elena Marwick",
                [
                    "Elena Marwick is a screenwriter and director.",
                    "She was born in Valdorra in 1961.",
                    *_filler("career", 3),
                ],
            ],
            [
                "Harbor Film Festival",
                ["The Harbor Film Festival is held every spring.", *_filler("festival", 3)],
            ],
        ],
    },
    {
        "_id": "comparison-1",
        "question": "Were Lake Ostrand and Lake Veimar both formed by glaciers?",
        "answer": "yes",
        "supporting_facts": [["Lake Ostrand", 0], ["Lake Veimar", 1]],
        "type": "comparison",
        "level": "hard",
        "context": [
            [
                "Glacier National Trail",
                ["The Glacier National Trail crosses three valleys.", *_filler("trail", 3)],
            ],
            ["Ostrand", ["Ostrand is a village in the hills.", *_filler("village", 3)]],
            ["Lake Ostrand", ["Lake Ostrand is a lake formed by glaciers.", *_filler("lake", 2)]],
            ["River Veim", ["The River Veim drains the eastern plain.", *_filler("river", 3)]],
            [
                "Lake Veimar",
                ["Lake Veimar lies in the south.", "It was formed by glaciers.", *_filler("shore", 2)],
            ],
            ["Lake Tessel", ["Lake Tessel is a reservoir built in 1950.", *_filler("dam", 3)]],
        ],
    },
    {
        "_id": "bridge-2",
        "question": "What instrument does the founder of the Grelling Quartet play?",
        "answer": "the viola",
        "supporting_facts": [["Grelling Quartet", 0], ["Anya Sorel", 0]],
        "type": "bridge",
        "level": "hard",
        "context": [
            [
                "String instrument",
                ["A string instrument makes sound from vibrating strings.", *_filler("music", 3)],
            ],
            ["Grelling", ["Grelling is a small town.", *_filler("town", 3)]],
            ["Anya Sorel", ["Anya Sorel is a musician who plays the viola.", *_filler("concert", 3)]],
            [
                "Grelling Quartet",
                ["The Grelling Quartet was founded by Anya Sorel in 1990.", *_filler("quartet", 2)],
            ],
            ["Piano Trio", ["A piano trio plays chamber music.", *_filler("trio", 3)]],
            ["Quartet (film)", ["Quartet is a film about four musicians.", *_filler("cinema", 3)]],
        ],
    },
]


def _write(tmp_path: Path, items, name: str = "hotpot_dev_distractor_v1.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(items, indent=1))
    return path


def _word_tokenizer(texts: list[str]):
    """A fast WordLevel tokenizer (words and punctuation) with an EOS appended, like T5's."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]+", t)})
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>"
    )


@pytest.fixture
def examples(tmp_path):
    return H.load_hotpotqa(str(_write(tmp_path, ITEMS)))["dev"]


@pytest.fixture
def tokenizer():
    texts = [json.dumps(ITEMS), *(t.text for t in H.TEMPLATES)]
    return _word_tokenizer(texts)


def _length(tok, text: str) -> int:
    return len(tok([text])["input_ids"][0])


def test_loader_keeps_every_paragraph_as_title_and_sentences(examples):
    e = examples[0]
    assert e.id == "bridge-1" and e.answers == ("Valdorra",)
    assert e.fields["question"].startswith("In which city")
    lines = e.fields["context"].split("\n")
    assert len(lines) == 7
    assert lines[3].startswith(
        "Moonlit Harbor: Moonlit Harbor is a 1998 drama film directed by Elena Marwick. It was"
    )
    assert e.meta["supporting_facts"] == [("Moonlit Harbor", 0), ("Elena Marwick", 1)]
    assert e.meta["type"] == "bridge" and e.meta["level"] == "hard"
    assert e.meta["paragraphs"][5] == ("Elena Marwick", ITEMS[0]["context"][5][1])


def test_loader_folder_picks_dev_then_train(tmp_path):
    _write(tmp_path, ITEMS[:1], "hotpot_train_v1.1.json")
    assert list(H.load_hotpotqa(str(tmp_path))) == ["train"]
    _write(tmp_path, ITEMS, "hotpot_dev_distractor_v1.json")
    splits = H.load_hotpotqa(str(tmp_path))
    assert list(splits) == ["dev"] and len(splits["dev"]) == 3


def test_fitted_input_holds_supporting_sentences_under_tight_budget(examples, tokenizer):
    budget = 90
    full = [_length(tokenizer, T5.render(e)) for e in examples]
    assert min(full) > 2 * budget  # the budget really bites
    fitted, stats = H.fit_context(examples, tokenizer, budget, T5)
    for e in fitted:
        assert _length(tokenizer, T5.render(e)) <= budget
    ctx = fitted[0].fields["context"]
    # both hops, though neither gold paragraph comes first and the answer sentence is not a lead sentence
    assert "Moonlit Harbor: Moonlit Harbor is a 1998 drama film directed by Elena Marwick." in ctx
    assert "She was born in Valdorra in 1961." in ctx
    assert "Anya Sorel is a musician who plays the viola." in fitted[2].fields["context"]
    assert stats["answer_survival"] == 1.0 and stats["support_survival"] == 1.0
    assert stats["all_support_survival"] == 1.0
    assert stats["input_tokens"]["max"] <= budget and stats["budget"] == budget and stats["n"] == 3
    # a plain cut at the budget would lose the answer: its paragraph is sixth of seven
    assert "Valdorra" not in tokenizer.decode(tokenizer([T5.render(examples[0])])["input_ids"][0][:budget])


def test_inputs_without_raw_paragraphs_pass_through_unchanged(examples, tokenizer):
    """A user's JSONL row or a predict/server input has a context but no loader meta: it is taken as given,
    beside loader examples in the same batch, which are still packed."""
    from promptlab.tasks.base import Example

    given = Example("user-1", {"question": "Who directed it?", "context": "Moonlit Harbor: a film. " * 40})
    fitted, stats = H.fit_context([given, examples[0]], tokenizer, 90, T5)
    assert fitted[0] == given and fitted[0].fields == given.fields
    assert _length(tokenizer, T5.render(fitted[1])) <= 90 < _length(tokenizer, T5.render(examples[0]))
    assert stats["n"] == 2
    with pytest.raises(DataError, match="uses field 'context' but example 'q' has only \\['question'\\]"):
        H.fit_context([Example("q", {"question": "Who?"})], tokenizer, 90, T5)


def test_budget_holds_with_a_byte_tokenizer_and_other_templates(examples):
    from transformers import ByT5Tokenizer

    tok = ByT5Tokenizer()
    for template in H.TEMPLATES:
        fitted, stats = H.fit_context(examples, tok, 400, template)
        assert all(_length(tok, template.render(e)) <= 400 for e in fitted)
        assert stats["input_tokens"]["max"] <= 400
        assert all(template.render(e).startswith(template.text.split("{question}")[0]) for e in fitted)


def test_selection_never_reads_gold_fields(examples, tokenizer):
    fitted, _ = H.fit_context(examples, tokenizer, 90, T5)
    rng = random.Random(0)
    blinded = []
    for e in examples:
        meta = copy.deepcopy(e.meta)
        meta["supporting_facts"] = []
        meta["type"] = meta["level"] = None
        blinded.append(type(e)(e.id, dict(e.fields), None, ("zzz",), meta))
        shuffled = copy.deepcopy(e.meta)
        rng.shuffle(shuffled["supporting_facts"])
        blinded.append(type(e)(e.id, dict(e.fields), None, e.answers, shuffled))
    again, stats = H.fit_context(blinded, tokenizer, 90, T5)
    assert [e.fields["context"] for e in again[::2]] == [e.fields["context"] for e in fitted]
    assert [e.fields["context"] for e in again[1::2]] == [e.fields["context"] for e in fitted]
    assert stats["n"] == 6


def test_malformed_json_names_line_and_column(tmp_path):
    path = tmp_path / "hotpot_dev_distractor_v1.json"
    path.write_text('[{"_id": "a",\n  "question": }]')
    with pytest.raises(
        DataError, match=r"hotpot_dev_distractor_v1\.json: malformed JSON at line 2, column 15"
    ):
        H.load_hotpotqa(str(path))


def test_missing_field_names_file_item_and_field(tmp_path):
    items = copy.deepcopy(ITEMS)
    del items[1]["answer"]
    path = _write(tmp_path, items)
    with pytest.raises(DataError, match=r"hotpot_dev_distractor_v1\.json: item 1 has no field 'answer'"):
        H.load_hotpotqa(str(path))
    items = copy.deepcopy(ITEMS)
    items[2]["context"][0][1] = "not a list of sentences"
    with pytest.raises(DataError, match=r"item 2 has a malformed 'context'"):
        H.load_hotpotqa(str(_write(tmp_path, items)))
    with pytest.raises(DataError, match="does not exist"):
        H.load_hotpotqa(str(tmp_path / "nope.json"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no hotpot_dev_distractor"):
        H.load_hotpotqa(str(tmp_path / "empty"))


def _fake_datasets(monkeypatch, load):
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load))


def test_hub_unreachable_says_to_pass_data(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    _fake_datasets(monkeypatch, offline)
    with pytest.raises(DataError, match="hub is unreachable.*--data PATH"):
        H.load_hotpotqa(None)


def test_hub_layout_converts_to_the_same_examples(monkeypatch, examples):
    def hub_row(item):
        return {
            "id": item["_id"],
            "question": item["question"],
            "answer": item["answer"],
            "type": item["type"],
            "level": item["level"],
            "supporting_facts": {
                "title": [t for t, _ in item["supporting_facts"]],
                "sent_id": [k for _, k in item["supporting_facts"]],
            },
            "context": {
                "title": [t for t, _ in item["context"]],
                "sentences": [s for _, s in item["context"]],
            },
        }

    _fake_datasets(monkeypatch, lambda path, name: {"validation": [hub_row(i) for i in ITEMS]})
    hub = H.load_hotpotqa(None)
    assert list(hub) == ["dev"]
    assert hub["dev"] == examples
    assert [e.meta for e in hub["dev"]] == [e.meta for e in examples]


def test_spec_templates_match_module_and_put_question_first():
    spec = yaml.safe_load((Path(H.__file__).parent / "specs" / "hotpotqa.yaml").read_text())
    assert [(t["name"], t["text"]) for t in spec["templates"]] == [(t.name, t.text) for t in H.TEMPLATES]
    assert spec["format"] == "hotpotqa" and spec["context"] == "hotpotqa" and spec["metrics"] == ["em", "f1"]
    for t in H.TEMPLATES:
        assert t.fields() == {"question", "context"}
        assert t.text.index("{question}") < t.text.index("{context}")


def test_real_dev_file_loads_300_examples():
    if not REAL.exists():
        pytest.skip(f"{REAL} not present")
    dev = H.load_hotpotqa(str(REAL))["dev"]
    assert len(dev) == 300 and len({e.id for e in dev}) == 300
    assert dev[0].id == "5a8b57f25542995d1e6f1371" and dev[0].answers == ("yes",)
    for e in dev:
        assert set(e.fields) == {"question", "context"} and e.fields["question"]
        assert e.fields["context"].count("\n") == len(e.meta["paragraphs"]) - 1
        assert all(f"{t}: " in e.fields["context"] for t, _ in e.meta["paragraphs"])
        assert e.meta["supporting_facts"]


@pytest.mark.slow
def test_real_survival_with_t5_sentencepiece_at_512(tmp_path):
    """The issue's target: answer and a supporting sentence survive in >= 90% of 512-token inputs."""
    if not REAL.exists():
        pytest.skip(f"{REAL} not present")
    spm = pytest.importorskip("sentencepiece")
    from transformers import T5Tokenizer

    rows = json.loads(REAL.read_text())
    corpus = tmp_path / "corpus.txt"
    with open(corpus, "w") as f:  # the seed recipe's tokenizer: SentencePiece unigram, vocab 8000
        for r in rows:
            f.write(r["question"] + "\n" + r["answer"] + "\n")
            f.writelines(" ".join(s) + "\n" for _, s in r["context"])
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(tmp_path / "spiece"), vocab_size=8000, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2,
    )  # fmt: skip
    tok = T5Tokenizer.from_pretrained(str(tmp_path), extra_ids=100)
    dev = H.load_hotpotqa(str(REAL))["dev"]
    _, stats = H.fit_context(dev, tok, 512, T5)
    assert stats["input_tokens"]["max"] <= 512
    assert stats["answer_survival"] >= 0.90, stats
    assert stats["support_survival"] >= 0.90, stats


def test_word_sums_and_direct_counts_equal_the_tokenizers_own(examples, tokenizer):
    """Costs are counted word by word through the Rust tokenizer with its truncation and padding switched off
    for the call — and left as they were: a tokenizer file that truncates (MiniLM's cuts at 128) once made every
    context 'fit'."""
    texts = [s for e in examples for _, sents in e.meta["paragraphs"] for s in sents if s.strip()]
    want = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    backend = tokenizer.backend_tokenizer
    backend.enable_truncation(max_length=3)
    backend.enable_padding(length=40, pad_id=0, pad_token="<pad>")
    memo: dict[str, int] = {}
    assert H._count_words(tokenizer, texts, memo) == want
    assert max(want) > 3 and len(memo) == len({w for t in texts for w in t.split()})
    assert H._count(tokenizer, texts, special=True) == [n + 1 for n in want]  # + the EOS
    assert backend.truncation["max_length"] == 3 and backend.padding["length"] == 40
    # words counted inside long joined texts (the fast path) = each word encoded alone
    assert H._splits_at_spaces(tokenizer)
    alone: dict[str, int] = {}
    with mock.patch.object(H, "_splits_at_spaces", return_value=False):
        assert H._count_words(tokenizer, texts, alone) == want
    assert alone == memo


def test_selection_leaves_room_for_a_soft_prompt_and_the_answer_on_absolute_positions(examples):
    """On GPT-2 (absolute positions) the soft prompt's virtual tokens and the answer take positions too: the
    context is chosen for what is left, so generation does not cut the input's end (the question's cue) again.
    T5's relative positions reserve nothing."""
    import torch
    from peft import PromptTuningConfig, get_peft_model
    from transformers import ByT5Tokenizer, GPT2Config, GPT2LMHeadModel, T5Config, T5ForConditionalGeneration

    from promptlab.backbones import from_pretrained_objects
    from promptlab.config import RunConfig
    from promptlab.inputs import fit_inputs
    from promptlab.inputs import reservations as reserved
    from promptlab.tasks import get_task

    torch.manual_seed(0)
    task, cfg = get_task("hotpotqa"), RunConfig(task="hotpotqa", method="prompt-tuning")
    tok = ByT5Tokenizer()
    gpt = GPT2LMHeadModel(GPT2Config(vocab_size=384, n_embd=16, n_layer=1, n_head=2, n_positions=300,
                                     bos_token_id=1, eos_token_id=1, pad_token_id=0))
    bb = from_pretrained_objects("gpt2-300", gpt, tok)
    template = H.TEMPLATES[1]  # the instruct template ends with "Answer:", which a cut would drop
    room = 300 - 20 - task.max_new_tokens
    assert bb.max_length == 300 and room < 300 < task.extras["max_input_tokens"]

    unreserved, _ = H.fit_context(examples, tok, task.extras["max_input_tokens"], template)
    assert max(_length(tok, template.render(e)) for e in unreserved) > room  # what was selected before: cut later
    fitted, stats = fit_inputs(task, bb, template, cfg, examples, virtual=20)  # before training: from the config
    assert stats["budget"] == room
    assert all(_length(tok, template.render(e)) <= room and template.render(e).endswith("Answer:") for e in fitted)
    prompted = get_peft_model(bb.model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=20))
    predictor = types.SimpleNamespace(model=prompted, readout=types.SimpleNamespace(max_new_tokens=task.max_new_tokens))
    assert reserved(predictor) == {"virtual": 20, "new_tokens": task.max_new_tokens}
    again, stats = fit_inputs(task, bb, template, cfg, examples, **reserved(predictor))  # after: from the model
    assert stats["budget"] == room == bb.input_budget(prompted, new_tokens=task.max_new_tokens)
    assert [e.fields["context"] for e in again] == [e.fields["context"] for e in fitted]

    t5 = T5ForConditionalGeneration(T5Config(vocab_size=384, d_model=16, d_ff=32, d_kv=8, num_layers=1, num_heads=2,
                                             decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))
    _, stats = fit_inputs(task, from_pretrained_objects("t5", t5, tok, max_length=512), template, cfg, examples,
                          virtual=20)
    assert stats["budget"] == 512
