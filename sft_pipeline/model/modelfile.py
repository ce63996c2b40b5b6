"""The Ollama Modelfile written beside the GGUF files: `ollama create NAME -f Modelfile` in the
export folder makes a model that prompts as training did and samples as the recipe says.

Ollama reads the file line by line: FROM names the weights (a path relative to the Modelfile),
TEMPLATE a Go template over .Messages, SYSTEM the default system prompt, each PARAMETER one
option. Multi-line values go between triple quotes, which therefore cannot occur inside them.
"""

from __future__ import annotations

import json

from ..config import GenerateConfig
from ..errors import PipelineError
from .chat_template import Layout, ollama_template


class ModelfileError(PipelineError, ValueError):
    pass


def _triple(key: str, text: str) -> str:
    if '"""' in text:
        raise ModelfileError(f'export: the Modelfile\'s {key} would contain """, which ends an Ollama value early')
    return f'{key} """{text}"""'


def sampling(cfg: GenerateConfig) -> list[tuple[str, object]]:
    """recipe.generate as Ollama options. Greedy (do_sample false, or temperature 0) is
    temperature 0 there; top_k/top_p only shape sampling, so they are written only with it."""
    greedy = not cfg.do_sample or cfg.temperature == 0
    params: list[tuple[str, object]] = [("temperature", 0 if greedy else cfg.temperature)]
    if not greedy:
        params += [("top_p", cfg.top_p), ("top_k", cfg.top_k)]
    params += [("repeat_penalty", cfg.repetition_penalty), ("seed", cfg.seed), ("num_predict", cfg.max_new_tokens)]
    return params


def modelfile_text(gguf_name: str, layout: Layout | None, system: str | None, stops: list[str],
                   generate: GenerateConfig, header: str) -> str:
    """The Modelfile. layout None (a chat template with no fixed per-role layout): no TEMPLATE, so
    Ollama takes the chat template the GGUF file carries (its tokenizer.chat_template)."""
    lines = [f"# {line}" for line in header.splitlines()]
    lines.append(f"FROM ./{gguf_name}")
    if layout is not None:
        lines.append(_triple("TEMPLATE", ollama_template(layout)))
    else:
        lines.append("# no TEMPLATE: the chat template is not one prefix and suffix per role; Ollama uses the "
                     "GGUF file's tokenizer.chat_template")
    if system is not None:
        lines.append(_triple("SYSTEM", system))
    for stop in stops:
        lines.append(f"PARAMETER stop {json.dumps(stop, ensure_ascii=False)}")
    for key, value in sampling(generate):
        lines.append(f"PARAMETER {key} {value}")
    return "\n".join(lines) + "\n"
