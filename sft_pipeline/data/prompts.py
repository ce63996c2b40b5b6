"""Rendering conversations as text, with the character span of every assistant turn.

The spans are what makes `loss_on: assistant` exact: pack labels a token when its characters
overlap a span (data/tokens.py), whatever tokenizer or template produced the text. Tool-call
turns are assistant turns (trained); tool results are not. `content_spans` says where each
content field of the record lies in the text, so that pack can tokenize the content as text
(data/control.py) while the template's own markup keeps its control tokens.
"""

from __future__ import annotations

import re
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


def _render_plain(messages: list[dict[str, str]], cfg: TemplateConfig) -> tuple[str, list[Span], list[Span]]:
    """Text, assistant spans, and the span of every turn's content."""
    fmt = _formats(cfg)
    parts: list[str] = []
    spans: list[Span] = []
    contents: list[Span] = []
    pos = 0
    for msg in messages:
        if parts:
            pos += len(fmt.separator)
        wrap = {"system": "{content}", "user": fmt.user}.get(msg["role"], fmt.assistant)
        piece = wrap.replace("{content}", msg["content"])
        start = pos + wrap.index("{content}")
        contents.append((start, start + len(msg["content"])))
        if msg["role"] == "assistant":
            spans.append((start, pos + len(piece)))
        parts.append(piece)
        pos += len(piece)
    return fmt.separator.join(parts), spans, contents


def _chat(tokenizer: Any, messages: list[dict[str, Any]], gen: bool, tools: list | None = None) -> str:
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=gen)


def _render_chat(messages: list[dict[str, Any]], tokenizer: Any, tools: list | None) -> tuple[str, list[Span], str]:
    """Text, assistant spans, and the prompt before the last turn (a by-product: that prefix is
    rendered anyway, and jinja rendering is most of this stage's time)."""
    text = _chat(tokenizer, messages, False, tools)
    spans: list[Span] = []
    prefix = ""
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        prefix = _chat(tokenizer, messages[:i], True, tools)
        upto = text if i == len(messages) - 1 else _chat(tokenizer, messages[: i + 1], False, tools)
        if text.startswith(upto) and upto.startswith(prefix):
            spans.append((len(prefix), len(upto)))  # the answer (or call) and its end-of-turn markup
            continue
        # Templates that rewrite earlier turns (e.g. drop past reasoning): find the answer itself.
        start = text.find(msg["content"], spans[-1][1] if spans else 0) if msg["content"] else -1
        if start < 0:
            raise TemplateError("the tokenizer's chat template changes assistant text; use template.kind: custom")
        spans.append((start, start + len(msg["content"])))
    return text, spans, prefix


def render(messages: list[dict[str, Any]], cfg: TemplateConfig, tokenizer: Any = None,
           tools: list | None = None) -> tuple[str, list[Span]]:
    text, spans, _ = render_sample(messages, cfg, tokenizer, tools)
    return text, spans


def _chat_tokenizer(tokenizer: Any) -> Any:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise TemplateError("template.kind: chat needs a tokenizer with a chat template; use seed or custom")
    return tokenizer


def render_sample(messages: list[dict[str, Any]], cfg: TemplateConfig, tokenizer: Any = None,
                  tools: list | None = None) -> tuple[str, list[Span], str]:
    """The training text, its assistant spans, and the prompt for the last answer (what
    generation and evaluation feed the model). Tool calls and `tools` (definitions) are for
    chat templates that render them (data/tools.py decides; plain formats have none)."""
    if cfg.kind == "chat":
        return _render_chat(_with_system(messages, cfg), _chat_tokenizer(tokenizer), tools)
    text, spans, _ = _render_plain(_with_system(messages, cfg), cfg)
    return text, spans, render_prompt(messages[:-1], cfg)


def render_prompt(messages: list[dict[str, Any]], cfg: TemplateConfig, tokenizer: Any = None) -> str:
    """The text a model continues to answer the last user turn (generation and evaluation)."""
    messages = _with_system(messages, cfg)
    if cfg.kind == "chat":
        return _chat(tokenizer, messages, True)
    fmt = _formats(cfg)
    text, _, _ = _render_plain(messages, cfg)
    return text + fmt.separator + fmt.assistant.split("{content}")[0]


# ---- where the record's content lies in the rendered text -----------------------------------

# Supplementary Private Use Area-A characters around a number: no template writes them, and
# content that held such a sequence could only make placement fail (a named drop)
_MARK = re.compile("\U000F0000" + r"(\d+)" + "\U000F0001")


def _mark(i: int) -> str:
    return f"\U000F0000{i}\U000F0001"


def _fill(skeleton: str, contents: list[str]) -> tuple[str, list[Span]] | None:
    """The skeleton (rendered with markers for contents) with the contents put back, and where
    each went; None when a marker is missing or repeated (the template moved or copied it)."""
    parts, spans, pos, last = [], [], 0, 0
    seen: list[int] = []
    for m in _MARK.finditer(skeleton):
        parts.append(skeleton[last : m.start()])
        pos += m.start() - last
        i = int(m.group(1))
        seen.append(i)
        parts.append(contents[i])
        spans.append((pos, pos + len(contents[i])))
        pos += len(contents[i])
        last = m.end()
    wanted = [i for i, c in enumerate(contents) if c]
    if seen != wanted:
        return None
    parts.append(skeleton[last:])
    return "".join(parts), spans


def _chat_content_spans(messages: list[dict[str, Any]], tokenizer: Any, text: str, tools: list | None) -> list[Span] | None:
    """Render once with a marker in place of each non-empty content, then put the contents
    back: where that gives the template's own text, the markers' places are the contents'.
    Templates that trim content (Llama 3, Gemma) match once the contents are trimmed too; a
    template that rewrites content otherwise (splits reasoning out, say) gives None."""
    marked = [dict(m, content=_mark(i)) if m["content"] else m for i, m in enumerate(messages)]
    skeleton = _chat(tokenizer, marked, False, tools)
    for contents in ([m["content"] for m in messages], [m["content"].strip() for m in messages]):
        filled = _fill(skeleton, contents)
        if filled is not None and filled[0] == text:
            return filled[1]
    return None


def content_spans(messages: list[dict[str, Any]], cfg: TemplateConfig, text: str, tokenizer: Any = None,
                  tools: list | None = None) -> list[Span] | None:
    """The span in `text` (render_sample's) of every non-empty content of the record's turns
    (a recipe's template.system is the template's, not the record's); None where the chat
    template rewrites content so that it cannot be found exactly."""
    full = _with_system(messages, cfg)
    added = len(full) - len(messages)
    if cfg.kind == "chat":
        spans = _chat_content_spans(full, _chat_tokenizer(tokenizer), text, tools)
        if spans is None:
            return None
        own = [i for i, m in enumerate(full) if m["content"]]
        return [s for i, s in zip(own, spans) if i >= added]
    _, _, contents = _render_plain(full, cfg)
    return [s for i, s in enumerate(contents) if i >= added and s[1] > s[0]]


def needs_eos(cfg: TemplateConfig) -> bool:
    """Chat templates close each turn with their own end token; plain formats need EOS added."""
    return cfg.kind != "chat"
