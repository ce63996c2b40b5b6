"""Control text: a special token's text written inside a record's content.

A tokenizer finds its special tokens' text anywhere in a string, so an answer that contains
"<|im_end|>\\n<|im_start|>user\\n..." becomes the real end of turn and a fake user turn, and
the model learns to close its answer and open a user turn in mid-answer. By default
(`template.control_text: text`) the content of a record is tokenized as text: those
characters become their ordinary tokens, while the template's own markup keeps its control
tokens. `drop` drops such records (reason CONTROL_TEXT); `keep` tokenizes them as before, on
purpose. Either way they are counted.

The template stage finds the records (the tokenizer's own special tokens, exactly) and writes
where each content field lies in the rendered text; pack tokenizes those records with a
TextEncoder, every other record with the tokenizer as it is (data/tokens.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .arrow_io import iter_batches
from .prompts import TemplateError

CONTROL_TEXT = "control_text"  # template.control_text: drop
# control text where it cannot be tokenized as text: inside a tool call's arguments or tool
# definitions (templates write those as JSON), or in content the chat template rewrites
UNPLACED = "control_text_unplaced"


def specials(tokenizer: Any) -> dict[str, tuple[int, Any]]:
    """The tokenizer's special added tokens by text, as (id, AddedToken): what it matches in
    any string. Non-special added tokens (Qwen's <think>, <tool_call>) are words the model
    writes, matched in text on purpose, and are not control text."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    added = backend.get_added_tokens_decoder() if backend is not None else tokenizer.added_tokens_decoder
    return {t.content: (i, t) for i, t in sorted(added.items()) if t.special and t.content}


def pattern(tokenizer: Any) -> re.Pattern | None:
    """A regex for the special tokens' text, longest first (leftmost-longest, as the tokenizer
    matches them); None for a tokenizer without any."""
    texts = sorted(specials(tokenizer), key=len, reverse=True)
    return re.compile("|".join(re.escape(t) for t in texts)) if texts else None


def fields(messages: list[dict[str, Any]], tools: str | None) -> tuple[list[str], list[str]]:
    """A record's text fields: (the turns' contents, the tool parts written as JSON: each
    call's name and arguments, and the tool definitions)."""
    contents = [m["content"] for m in messages]
    structured = [f"{c['name']}{c['arguments']}" for m in messages for c in m.get("tool_calls") or []]
    return contents, structured + ([tools] if tools else [])


def count(texts: Iterable[str], rx: re.Pattern | None) -> int:
    """How many of `texts` contain control text."""
    return 0 if rx is None else sum(1 for t in texts if rx.search(t))


# ---- tokenizing content as text ---------------------------------------------------------------


class ControlTextError(TemplateError):
    """Control text that cannot be tokenized as text here; the message says which setting to use."""


_SENTINEL = 0x100000  # Supplementary Private Use Area-B: a stand-in character per special token
_FILL = chr(0x10FFFD)
_RESERVED = re.compile("[\U00100000-\U0010FFFF]")


class TextEncoder:
    """The tokenizer's Rust backend, copied, with special-token text read as text
    (`encode_special_tokens`, the backend's split_special_tokens) and, for each special
    token, a stand-in of the same length that it does match, with the same strip flags. The
    template's own control tokens are written as their stand-ins: the text is then split at
    exactly the places the tokenizer would split it, character offsets stay those of the
    real text, and the stand-ins' ids are mapped back to the real tokens'."""

    def __init__(self, tokenizer: Any):
        from tokenizers import AddedToken, Tokenizer

        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ControlTextError(f"pack: the tokenizer ({type(tokenizer).__name__}) has no fast backend to tokenize "
                             "control text as text; set template.control_text: drop or keep")
        self.clone = Tokenizer.from_str(backend.to_str())
        self.clone.encode_special_tokens = True
        self.clone.no_truncation()
        self.clone.no_padding()
        self.rx = pattern(tokenizer)
        self.stand_in: dict[str, str] = {}
        pairs = []
        for k, (text, (real, tok)) in enumerate(sorted(specials(tokenizer).items())):
            stand_in = chr(_SENTINEL + k) + _FILL * (len(text) - 1)
            self.stand_in[text] = stand_in
            pairs.append((stand_in, real))
            self.clone.add_tokens([AddedToken(stand_in, single_word=tok.single_word, lstrip=tok.lstrip,
                                              rstrip=tok.rstrip, normalized=tok.normalized, special=False)])
        ids = {self.clone.token_to_id(s): real for s, real in pairs}
        self.id_map = np.arange(self.clone.get_vocab_size(with_added_tokens=True), dtype=np.int64)
        self.id_map[list(ids)] = list(ids.values())

    def _rewrite(self, text: str, contents: list[list[int]]) -> str:
        """`text` with every special token's text outside the content spans as its stand-in."""
        if _RESERVED.search(text):
            raise ControlTextError("pack: a sample contains characters U+100000 and above, which tokenizing control "
                             "text as text uses as stand-ins; set template.control_text: drop or keep")
        out, last = [], 0
        assert self.rx is not None
        for m in self.rx.finditer(text):
            inside = any(s <= m.start() and m.end() <= e for s, e in contents)
            if not inside:
                out += [text[last : m.start()], self.stand_in[m.group()]]
                last = m.end()
        return "".join(out) + text[last:]

    def encode(self, texts: list[str], contents: list[list[list[int]]]) -> tuple[list[list[int]], list[list[tuple[int, int]]]]:
        """Token ids and character offsets, as the fast path's `_encode` gives them."""
        encodings = self.clone.encode_batch([self._rewrite(t, c) for t, c in zip(texts, contents)],
                                            add_special_tokens=True)
        return [self.id_map[e.ids].tolist() for e in encodings], [e.offsets for e in encodings]


_ENCODERS: dict[int, tuple[Any, TextEncoder]] = {}


def text_encoder(tokenizer: Any) -> TextEncoder:
    """One TextEncoder per tokenizer (copying the backend costs a serialization of it)."""
    held = _ENCODERS.get(id(tokenizer))
    if held is None or held[0] is not tokenizer:
        held = _ENCODERS[id(tokenizer)] = (tokenizer, TextEncoder(tokenizer))
    return held[1]


def split_counts(folder: Path) -> dict[str, int]:
    """What a template split holds: the samples with control text, their fields with it, and
    the samples tokenized as text (the others keep it as control tokens: control_text: keep)."""
    out = {"records": 0, "fields": 0, "tokenized_as_text": 0}
    for batch in iter_batches(folder):
        if "control_fields" not in batch.schema.names:
            continue  # written before control text was looked for
        cols = batch.select(["control_fields", "content_spans"]).to_pydict()
        out["records"] += sum(1 for n in cols["control_fields"] if n)
        out["fields"] += sum(n or 0 for n in cols["control_fields"])
        out["tokenized_as_text"] += sum(1 for c in cols["content_spans"] if c)
    return out
