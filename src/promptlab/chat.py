"""Chat templates: how a prompt becomes the conversation an instruct model was trained on.

One rendering function (`render_chat`) serves the hard prompts (zero-shot, few-shot, cot, prompt-search), the soft
prompts on a chat model, and the server's /v1/chat/completions, so a prompt reads the same offline and served.
A rendered text holds the template's special tokens as text (Llama 3's `<|begin_of_text|>`); `holds_specials`
tells tokenisation not to add the tokenizer's own on top, so the ids are `apply_chat_template(tokenize=True)`'s.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Self

from .errors import ConfigError, first_line

# A stand-in for the user turn's text while the template around it is rendered (input_template): no template
# writes it, and it holds no braces.
SLOT = "\x00promptlab-input\x00"


@dataclass(frozen=True)
class ChatFormat:
    """A run's chat rendering: the system turn (None: the template's default) and the template's kwargs."""

    system: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    as_messages: bool = False  # sent as a messages list (an API's chat endpoint), not rendered here

    def meta(self) -> dict[str, Any]:
        return {"template": True, "system_prompt": self.system, "kwargs": dict(self.kwargs),
                **({"messages": True} if self.as_messages else {})}

    def messages(self, turns: Sequence[tuple[str, str]], user: str) -> list[dict[str, str]]:
        """The system turn, each demonstration as a user turn and the assistant's answer (lm-eval's
        fewshot_as_multiturn), then the input as the last user turn."""
        out = [{"role": "system", "content": self.system}] if self.system is not None else []
        for question, answer in turns:
            out += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return out + [{"role": "user", "content": user}]


def chat_from_meta(meta: dict[str, Any] | None) -> ChatFormat | None:
    """A saved predictor's chat rendering (its extras' `chat`); None for raw text and for artifacts made before
    chat templates were rendered."""
    if not meta or not meta.get("template"):
        return None
    return ChatFormat(meta.get("system_prompt"), dict(meta.get("kwargs") or {}), bool(meta.get("messages")))


class Conversation(str):
    """A chat kept as its messages, for a server that applies its own template (an API's /v1/chat/completions):
    the request sends `messages`. As text it is one `role: content` line per message and a final `assistant:`
    (what promptlab's server renders for a model without a template): what budgets count and predictions.jsonl
    shows. A str, so every caller that passes inputs along (readout, evaluation, predictions) stays as it is."""

    messages: list[dict[str, str]]

    def __new__(cls, messages: Sequence[dict[str, Any]]) -> Self:
        msgs = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
        self = super().__new__(cls, "".join(f"{m['role']}: {m['content']}\n" for m in msgs) + "assistant:")
        self.messages = msgs
        return self

    def ask(self, text: str) -> Conversation:
        """`text` appended to the last user message (the user's turn still ends the conversation)."""
        return Conversation([*self.messages[:-1], {**self.messages[-1], "content": self.messages[-1]["content"] + text}])

    def reply(self, answer: str, user: str) -> Conversation:
        """The assistant's `answer`, then a new user turn."""
        return Conversation([*self.messages, {"role": "assistant", "content": answer}, {"role": "user", "content": user}])


def sends_messages(tokenizer: Any) -> bool:
    """Whether a backbone's tokenizer keeps a chat as its messages (Conversation) for a server to render."""
    return bool(getattr(tokenizer, "sends_messages", False))


def has_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def parse_kwargs(text: str | None, flag: str = "--chat-template-kwargs") -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{flag} is not valid JSON ({e.msg} at column {e.colno}); give an object, e.g. "
                          "'{\"enable_thinking\": false}'") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{flag} must be a JSON object, got {type(value).__name__}; e.g. "
                          "'{\"enable_thinking\": false}'")
    return value


def kwargs_ok(text: str) -> bool:
    """The config's range check of --chat-template-kwargs: a JSON object."""
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False


def resolve_chat(backbone: Any, mode: str, system: str | None, kwargs: str | None) -> ChatFormat | None:
    """--chat-template auto|on|off for this backbone: a ChatFormat, or None for raw text. `on` without a
    template, and a system prompt or kwargs with no template to put them in, are one-line errors."""
    tokenizer, name = backbone.tokenizer, backbone.name
    check = getattr(backbone, "check_chat", None)  # an API model says which of these its endpoint takes
    if check is not None:
        check(mode, system, kwargs)
    usable = backbone.kind != "encoder" and has_template(tokenizer)
    if mode == "on" and not usable:
        why = "is an encoder, which reads no conversation" if backbone.kind == "encoder" else \
            "has no chat template (its tokenizer_config.json sets no chat_template)"
        raise ConfigError(f"--chat-template on: model '{name}' {why}; use --chat-template auto or off")
    if mode == "off" or not usable:
        for value, flag in ((system, "--system-prompt"), (kwargs, "--chat-template-kwargs")):
            if value:
                where = "--chat-template off" if mode == "off" else f"model '{name}' has no chat template"
                raise ConfigError(f"{flag} goes into a chat template, but {where}; drop {flag}, or use an instruct "
                                  "model whose tokenizer has one")
        return None
    fmt = ChatFormat(system, parse_kwargs(kwargs), sends_messages(tokenizer))
    render_chat(tokenizer, fmt.messages([("q", "a")], "q"), fmt.kwargs)  # a template that refuses these turns says so now
    return fmt


def render_chat(tokenizer: Any, messages: list[dict[str, Any]], kwargs: dict[str, Any] | None = None) -> str:
    """The conversation as the model reads it: the tokenizer's chat template with the generation prompt, special
    tokens as text. The one rendering every caller shares."""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **(kwargs or {}))
    except Exception as e:  # noqa: BLE001 — jinja2's TemplateError and the template's own raise_exception
        raise ConfigError(f"the model's chat template refused this conversation ({type(e).__name__}: "
                          f"{first_line(e)[:160]}); use --chat-template off, or drop --system-prompt if the "
                          "template takes no system turn") from None


def around(tokenizer: Any, fmt: ChatFormat, turns: Sequence[tuple[str, str]], text: str) -> str:
    """A template's `text` (with its {fields}) as the last user turn of the rendered conversation, everything else
    escaped: the whole text the model reads around an example's fields, to fit a long context around."""
    rendered = render_chat(tokenizer, fmt.messages(turns, SLOT), fmt.kwargs)
    return rendered.replace("{", "{{").replace("}", "}}").replace(SLOT, text)


def holds_specials(tokenizer: Any, text: str) -> bool:
    """Whether `text` already starts with the tokenizer's BOS as text (a chat template wrote it): tokenised with
    add_special_tokens=False, as apply_chat_template(tokenize=True) does, it keeps one BOS, not two."""
    bos = getattr(tokenizer, "bos_token", None)
    return bool(bos) and text.startswith(bos)


def add_specials(tokenizer: Any, texts: Sequence[str]) -> bool:
    """add_special_tokens for one batch: off when its texts were rendered by a chat template."""
    return not any(holds_specials(tokenizer, t) for t in texts)


def token_ids(tokenizer: Any, texts: Sequence[str], **kw: Any) -> list[list[int]]:
    """Each text's ids (no padding), adding the tokenizer's special tokens only to texts that do not hold them
    already: a batch may mix chat-rendered and raw texts (the server batches several prompts)."""
    texts = list(texts)
    out: list[list[int]] = [[] for _ in texts]
    for special in (True, False):
        idx = [i for i, t in enumerate(texts) if holds_specials(tokenizer, t) != special]
        if idx:
            ids = tokenizer([texts[i] for i in idx], add_special_tokens=special, **kw)["input_ids"]
            for i, row in zip(idx, ids):
                out[i] = list(row)
    return out
