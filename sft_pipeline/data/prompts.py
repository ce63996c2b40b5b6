"""Rendering conversations as text, with the character span of every assistant turn.

The spans are what makes `loss_on: assistant` exact: pack labels a token when its characters
overlap a span (data/tokens.py), whatever tokenizer or template produced the text.
"""

from __future__ import annotations

from typing import Any

from ..config import TemplateConfig
from ..errors import PipelineError

Span = tuple[int, int]

SEED = TemplateConfig(kind="seed")  # the seed's "Question: {question}\n\nAnswer: {answer}"


class TemplateError(PipelineError, ValueError):
    pass


def _with_system(messages: list[dict[str, str]], cfg: TemplateConfig) -> list[dict[str, str]]:
    if cfg.system is not None and messages and messages[0]["role"] != "system":
        return [{"role": "system", "content": cfg.system}, *messages]
    return messages


def _formats(cfg: TemplateConfig) -> TemplateConfig:
    return SEED if cfg.kind == "seed" else cfg


def _render_plain(messages: list[dict[str, str]], cfg: TemplateConfig) -> tuple[str, list[Span]]:
    fmt = _formats(cfg)
    parts: list[str] = []
    spans: list[Span] = []
    pos = 0
    for msg in messages:
        if parts:
            pos += len(fmt.separator)
        if msg["role"] == "system":
            piece = msg["content"]
        elif msg["role"] == "user":
            piece = fmt.user.replace("{content}", msg["content"])
        else:
            piece = fmt.assistant.replace("{content}", msg["content"])
            spans.append((pos + fmt.assistant.index("{content}"), pos + len(piece)))
        parts.append(piece)
        pos += len(piece)
    return fmt.separator.join(parts), spans


def _chat(tokenizer: Any, messages: list[dict[str, str]], gen: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)


def _render_chat(messages: list[dict[str, str]], tokenizer: Any) -> tuple[str, list[Span], str]:
    """Text, assistant spans, and the prompt before the last turn (a by-product: that prefix is
    rendered anyway, and jinja rendering is most of this stage's time)."""
    text = _chat(tokenizer, messages, gen=False)
    spans: list[Span] = []
    prefix = ""
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        prefix = _chat(tokenizer, messages[:i], gen=True)
        upto = text if i == len(messages) - 1 else _chat(tokenizer, messages[: i + 1], gen=False)
        if text.startswith(upto) and upto.startswith(prefix):
            spans.append((len(prefix), len(upto)))  # the answer and its end-of-turn markup
            continue
        # Templates that rewrite earlier turns (e.g. drop past reasoning): find the answer itself.
        start = text.find(msg["content"], spans[-1][1] if spans else 0)
        if start < 0:
            raise TemplateError("the tokenizer's chat template changes assistant text; use template.kind: custom")
        spans.append((start, start + len(msg["content"])))
    return text, spans, prefix


def render(messages: list[dict[str, str]], cfg: TemplateConfig, tokenizer: Any = None) -> tuple[str, list[Span]]:
    text, spans, _ = render_sample(messages, cfg, tokenizer)
    return text, spans


def render_sample(messages: list[dict[str, str]], cfg: TemplateConfig, tokenizer: Any = None) -> tuple[str, list[Span], str]:
    """The training text, its assistant spans, and the prompt for the last answer (what
    generation and evaluation feed the model)."""
    if cfg.kind == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise TemplateError("template.kind: chat needs a tokenizer with a chat template; use seed or custom")
        return _render_chat(_with_system(messages, cfg), tokenizer)
    text, spans = _render_plain(_with_system(messages, cfg), cfg)
    return text, spans, render_prompt(messages[:-1], cfg)


def render_prompt(messages: list[dict[str, str]], cfg: TemplateConfig, tokenizer: Any = None) -> str:
    """The text a model continues to answer the last user turn (generation and evaluation)."""
    messages = _with_system(messages, cfg)
    if cfg.kind == "chat":
        return _chat(tokenizer, messages, gen=True)
    fmt = _formats(cfg)
    text, _ = _render_plain(messages, cfg)
    return text + fmt.separator + fmt.assistant.split("{content}")[0]


def needs_eos(cfg: TemplateConfig) -> bool:
    """Chat templates close each turn with their own end token; plain formats need EOS added."""
    return cfg.kind != "chat"
