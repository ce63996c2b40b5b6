"""The recipe's prompt template as the chat templates a GGUF file and Ollama carry with the model.

A GGUF file holds one Jinja chat template (tokenizer.chat_template) that llama.cpp, its server
and llama-cpp-python render before the model sees a conversation; an Ollama Modelfile holds a Go
template. A model fine-tuned on the seed's "Question: ...\\n\\nAnswer: ..." format answers well
only when prompted in that format, so both must render exactly what training rendered
(data/prompts.py render_prompt), not the base tokenizer's template.

Both are written from one Layout: the text before and after each role's content, what comes
between two turns, what opens the assistant's answer, and the system prompt used when a
conversation has none. For template.kind seed/custom the layout is the recipe's formats. For
kind chat the GGUF keeps the tokenizer's own Jinja template (a system prompt set in the recipe
put in front of it), and the layout Ollama needs is read off that template by rendering marked
conversations, then checked by rendering others both ways; a template that is not one prefix and
suffix per role (it rewrites turns, say) has no Layout, and Ollama reads the GGUF's template.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

from ..config import TemplateConfig
from ..data.prompts import SEED, TemplateError, render_prompt

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Layout:
    """A turn is prefix[role] + content + suffix[role]; turns are joined by `separator`, the text
    starts with `start`, and `generation` follows the last turn when a reply is asked for."""

    prefix: dict[str, str]
    suffix: dict[str, str]
    separator: str = ""
    generation: str = ""
    start: str = ""
    default_system: str | None = None  # put first when a conversation has no system turn
    roles: tuple[str, ...] = field(default=ROLES)

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        """The text the layout gives a conversation: what the generated templates must render."""
        if self.default_system is not None and messages and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.default_system}, *messages]
        turns = [self.prefix[_role(m)] + m["content"] + self.suffix[_role(m)] for m in messages]
        return self.start + self.separator.join(turns) + (self.generation if add_generation_prompt else "")


def _role(message: dict[str, Any]) -> str:
    """Plain formats write every turn that is not system or user as an answer (prompts.py)."""
    return message["role"] if message["role"] in ("system", "user") else "assistant"


def plain_layout(cfg: TemplateConfig) -> Layout:
    """template.kind seed/custom: the recipe's own formats, as data/prompts.py renders them."""
    fmt = SEED if cfg.kind == "seed" else cfg
    user, assistant = fmt.user.split("{content}"), fmt.assistant.split("{content}")
    return Layout(prefix={"system": "", "user": user[0], "assistant": assistant[0]},
                  suffix={"system": "", "user": user[1], "assistant": assistant[1]},
                  separator=fmt.separator, generation=fmt.separator + assistant[0], default_system=cfg.system)


# ---- Jinja (the GGUF's tokenizer.chat_template) ----------------------------------------------

def jinja_literal(text: str) -> str:
    """`text` as a single-quoted Jinja string literal. Only the escapes every engine reads (Python's
    jinja2, llama.cpp's minja, transformers'): backslash, quote, newline, tab, carriage return."""
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\t", "\\t")
    return "'" + escaped.replace("\r", "\\r") + "'"


def jinja_template(layout: Layout) -> str:
    """A Jinja chat template rendering what layout.render does. No text outside tags: the engines
    differ in how they trim whitespace around blocks (transformers trims, others do not)."""
    lit = jinja_literal
    parts = ["{%- set msgs = messages -%}"]
    if layout.default_system is not None:
        parts.append("{%- if messages and messages[0]['role'] != 'system' -%}"
                     f"{{%- set msgs = [{{'role': 'system', 'content': {lit(layout.default_system)}}}] + messages -%}}"
                     "{%- endif -%}")
    parts.append(f"{{{{- {lit(layout.start)} -}}}}")
    parts.append("{%- for m in msgs -%}")
    parts.append(f"{{%- if not loop.first -%}}{{{{- {lit(layout.separator)} -}}}}{{%- endif -%}}")
    for i, role in enumerate(("system", "user")):
        parts.append(f"{{%- {'if' if i == 0 else 'elif'} m['role'] == '{role}' -%}}"
                     f"{{{{- {lit(layout.prefix[role])} + m['content'] + {lit(layout.suffix[role])} -}}}}")
    parts.append("{%- else -%}"
                 f"{{{{- {lit(layout.prefix['assistant'])} + m['content'] + {lit(layout.suffix['assistant'])} -}}}}")
    parts.append("{%- endif -%}{%- endfor -%}")
    parts.append(f"{{%- if add_generation_prompt -%}}{{{{- {lit(layout.generation)} -}}}}{{%- endif -%}}")
    return "".join(parts)


def with_system(template: str, system: str) -> str:
    """A tokenizer's chat template with the recipe's template.system put first when a conversation
    has no system turn (what render_prompt does before rendering)."""
    return ("{%- if messages and messages[0]['role'] != 'system' -%}"
            f"{{%- set messages = [{{'role': 'system', 'content': {jinja_literal(system)}}}] + messages -%}}"
            "{%- endif -%}" + template)


def gguf_chat_template(cfg: TemplateConfig, tokenizer: Any) -> str:
    """The Jinja template the GGUF file carries for the recipe's template."""
    if cfg.kind != "chat":
        return jinja_template(plain_layout(cfg))
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or not template:
        raise TemplateError("template.kind: chat needs a tokenizer with a chat template; use seed or custom")
    return with_system(template, cfg.system) if cfg.system is not None else template


# ---- a chat template's layout, read off its renderings ---------------------------------------

MARK = {"system": "\u2983S\u2984", "user": "\u2983U\u2984", "assistant": "\u2983A\u2984", "user2": "\u2983V\u2984"}

# conversations a found layout must render exactly as the template does (content with spaces
# and newlines at its ends too: a template that trims content is not a prefix + suffix layout)
CHECKS = [
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": " one "}, {"role": "assistant", "content": "two\n"},
     {"role": "user", "content": "three"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
     {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}],
]


def _between(text: str, left: str | None, right: str | None) -> str | None:
    lo = 0 if left is None else text.find(left)
    if lo < 0:
        return None
    lo = lo + (len(left) if left else 0)
    hi = len(text) if right is None else text.find(right, lo)
    return None if hi < 0 else text[lo:hi]


def find_layout(render: Callable[[list[dict[str, Any]], bool], str]) -> Layout | None:
    """The Layout of a chat template given as `render(messages, add_generation_prompt)`, or None
    where the template is not one fixed prefix and suffix per role (checked on CHECKS)."""
    S, U, A, V = (MARK[k] for k in ("system", "user", "assistant", "user2"))
    msg = lambda role, content: {"role": role, "content": content}  # noqa: E731
    try:
        four = render([msg("system", S), msg("user", U), msg("assistant", A), msg("user", V)], False)
        three = render([msg("system", S), msg("user", U), msg("assistant", A)], False)
        two = render([msg("system", S), msg("user", U)], False)
        asked = render([msg("system", S), msg("user", U)], True)
        alone = render([msg("user", U)], False)
    except Exception:  # a template that refuses these shapes (e.g. strict role alternation)
        return None
    head, su, ua, au = (_between(four, None, S), _between(four, S, U), _between(four, U, A), _between(four, A, V))
    suffix = {"user": _between(two, U, None), "assistant": _between(three, A, None)}
    if None in (head, su, ua, au, suffix["user"], suffix["assistant"]) or not asked.startswith(two):
        return None
    if not ua.startswith(suffix["user"]) or not au.startswith(suffix["assistant"]):
        return None
    prefix = {"assistant": ua[len(suffix["user"]):], "user": au[len(suffix["assistant"]):]}
    if not su.endswith(prefix["user"]):
        return None
    suffix["system"] = su[: len(su) - len(prefix["user"])]
    before_user = _between(alone, None, U)
    if before_user is None or not before_user.endswith(prefix["user"]):
        return None
    rest = before_user[: len(before_user) - len(prefix["user"])]  # what a conversation without a system turn gets
    default = None
    if rest.startswith(head) and rest.endswith(suffix["system"]) and len(rest) >= len(head) + len(suffix["system"]):
        default = rest[len(head): len(rest) - len(suffix["system"])] if rest != head or suffix["system"] else None
    start = rest if default is None else ""
    if default is None and not head.startswith(start):
        return None
    prefix["system"] = head[len(start):]
    layout = Layout(prefix=prefix, suffix=suffix, generation=asked[len(two):], start=start, default_system=default)
    for messages in CHECKS:
        for gen in (False, True):
            if layout.render(messages, gen) != render(messages, gen):
                return None
    return layout


def chat_layout(cfg: TemplateConfig, tokenizer: Any) -> Layout | None:
    """The recipe's template as a Layout: exact for seed/custom; for chat, read off the
    tokenizer's template (with template.system as its system prompt), None where it has none."""
    if cfg.kind != "chat":
        return plain_layout(cfg)
    return find_layout(lambda messages, gen: render_prompt(messages, cfg, tokenizer) if gen
                       else tokenizer.apply_chat_template(_system_first(messages, cfg), tokenize=False))


def _system_first(messages: list[dict[str, Any]], cfg: TemplateConfig) -> list[dict[str, Any]]:
    if cfg.system is not None and messages and messages[0]["role"] != "system":
        return [{"role": "system", "content": cfg.system}, *messages]
    return messages


# ---- Go (the Ollama Modelfile's TEMPLATE) ----------------------------------------------------

def go_literal(text: str) -> str:
    """`text` as a Go template action printing it: a JSON string is a Go string literal (\\" \\\\ \\n
    \\t \\uXXXX), and printing through an action keeps "{{" in the text from opening one."""
    return "{{ " + json.dumps(text, ensure_ascii=False) + " }}" if text else ""


def ollama_template(layout: Layout) -> str:
    """An Ollama Go template over .Messages rendering what layout.render does (Ollama puts the
    Modelfile's SYSTEM first in .Messages when a request has no system message, so the default
    system prompt goes into SYSTEM, not here). As Ollama's own templates do, a last assistant
    turn is left open (no suffix) for the model to continue, and a reply is asked for otherwise."""
    lit = go_literal
    body = [lit(layout.start), "{{- range $i, $m := .Messages }}",
            "{{- $last := eq (len (slice $.Messages $i)) 1 }}"]
    if layout.separator:
        body.append("{{- if $i }}" + lit(layout.separator) + "{{ end }}")
    body.append('{{- if eq $m.Role "system" }}' + lit(layout.prefix["system"]) + "{{ $m.Content }}"
                + lit(layout.suffix["system"]))
    body.append('{{- else if eq $m.Role "user" }}' + lit(layout.prefix["user"]) + "{{ $m.Content }}"
                + lit(layout.suffix["user"]))
    body.append("{{- else }}" + lit(layout.prefix["assistant"]) + "{{ $m.Content }}"
                + ("{{- if not $last }}" + lit(layout.suffix["assistant"]) + "{{ end }}"
                   if layout.suffix["assistant"] else ""))
    body.append("{{- end }}")
    body.append('{{- if and $last (ne $m.Role "assistant") }}' + lit(layout.generation) + "{{ end }}")
    body.append("{{- end }}")
    return "".join(body)
