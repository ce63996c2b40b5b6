"""What answers in a chat: a transformers model (base, adapter, merged) or export's GGUF file
through llama.cpp. Both take the same rendered prompt text and the same sampling settings, and
hand each piece of the answer to a callback as it is decoded (streaming), in this thread: a
Ctrl-C interrupts the generation itself, with no worker thread left running.

Prompt tokens: the rendered text is tokenized with no special tokens added, its control tokens
parsed as such, in both backends (transformers: add_special_tokens=False, as `generate` does;
llama.cpp: add_bos=False, special=True): the template decides every token, so both backends see
the same ids for the same text.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Protocol

from ..config import GenerateConfig
from ..errors import PipelineError
from ..model import precision, sampling

Emit = Callable[[str], None]

# llama.cpp's context is allocated at load (the KV cache); a model trained for 32k tokens gets
# this many unless it was trained for fewer, which keeps a 7B chat within a few GB
GGUF_CONTEXT_CAP = 4096
# which export file chat takes when --quant is not given: the most faithful one present
GGUF_PREFERENCE = ("F16", "BF16", "F32", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M")


class ChatError(PipelineError, RuntimeError):
    """What chat cannot start with (no export, an unknown backend): one line saying what to run."""


class Backend(Protocol):
    context: int  # tokens the prompt and the answer must fit in together

    def count(self, text: str) -> int: ...

    def answer(self, text: str, seed: int, emit: Emit) -> str: ...


class TransformersBackend:
    """A transformers model, decoding with the recipe's GenerationConfig (model/sampling.py)."""

    def __init__(self, model: Any, tokenizer: Any, settings: GenerateConfig, compute: precision.Precision | None):
        self.model, self.tokenizer, self.compute = model, tokenizer, compute
        self.config = sampling.generation_config(settings, tokenizer, model.generation_config)
        self.context = context_of(model, tokenizer)

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def answer(self, text: str, seed: int, emit: Emit) -> str:
        import torch
        from transformers import TextStreamer

        class Pieces(TextStreamer):  # TextStreamer prints; this hands each finished piece to emit
            def on_finalized_text(self, piece: str, stream_end: bool = False) -> None:
                if piece:
                    emit(piece)

        device = self.model.device.type
        enc = self.tokenizer(text, return_tensors="pt", add_special_tokens=False).to(self.model.device)
        streamer = Pieces(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        with torch.no_grad(), sampling.seeded(seed if self.config.do_sample else None, device), \
                precision.autocast(self.compute, device) if self.compute else nullcontext():
            out = self.model.generate(**enc, generation_config=self.config, streamer=streamer)
        return self.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def context_of(model: Any, tokenizer: Any) -> int:
    """The model's context in tokens: its position limit, or the tokenizer's where that is smaller
    (tokenizers without one say 1e30)."""
    limits = [getattr(model.config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    usable = [int(n) for n in limits if isinstance(n, (int, float)) and 0 < n < 1e9]
    return min(usable) if usable else 2048


class LlamaCppBackend:
    """A GGUF file through llama_cpp.Llama, streamed, with the same sampling settings (temperature
    0 is llama.cpp's greedy; repeat_penalty is its CTRL-style penalty, over the whole context)."""

    def __init__(self, path: Path, settings: GenerateConfig, threads: int | None = None):
        import llama_cpp

        self.context = min(trained_context(path), GGUF_CONTEXT_CAP)
        self.params = sampling.llama_cpp_params(settings)
        self.llm = llama_cpp.Llama(str(path), n_ctx=self.context, verbose=False, n_threads=threads,
                                   last_n_tokens_size=self.context, seed=settings.seed)

    def tokens(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def count(self, text: str) -> int:
        return len(self.tokens(text))

    def answer(self, text: str, seed: int, emit: Emit) -> str:
        params = dict(self.params)
        if "seed" in params:
            params["seed"] = seed
        pieces = []
        for chunk in self.llm.create_completion(self.tokens(text), stream=True, **params):
            piece = chunk["choices"][0]["text"]
            if piece:
                pieces.append(piece)
                emit(piece)
        return "".join(pieces).strip()

    def close(self) -> None:
        self.llm.close()


def trained_context(path: Path) -> int:
    """<arch>.context_length from the GGUF's metadata, read without loading the weights."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def value(key: str) -> Any:
        field = reader.fields.get(key)
        return None if field is None else field.contents()

    arch = value("general.architecture")
    length = value(f"{arch}.context_length") if arch else None
    return int(length) if length else 2048


def find_gguf(run_dir: Path, quant: str | None, explicit: Path | None, recipe_path: str) -> Path:
    """The GGUF file chat loads: --gguf PATH, else export's <run dir>/export/model-<TYPE>.gguf of
    --quant TYPE, else the most faithful type present (GGUF_PREFERENCE, then any)."""
    if explicit is not None:
        if not explicit.is_file():
            raise ChatError(f"--gguf {explicit}: file not found")
        return explicit
    from ..stages.export import GGUF_FILES

    folder = run_dir / "export"  # by path: whatever it holds (not checked against the recipe)
    present = {p.name[len("model-"):-len(".gguf")]: p for p in sorted(folder.glob(GGUF_FILES))}
    if quant is not None:
        from ..model.gguf_tools import canonical_type

        want = canonical_type(quant)
        if want not in present:
            have = f" (it has {', '.join(present)})" if present else ""
            raise ChatError(f"no {folder / f'model-{want}.gguf'}{have}: run `sft-pipeline export {recipe_path}` "
                            f"with {want} among its types, or pick another --quant")
        return present[want]
    if not present:
        raise ChatError(f"no GGUF export in {folder}: run `sft-pipeline export {recipe_path}` first "
                        "(or give --gguf PATH)")
    for name in GGUF_PREFERENCE:
        if name in present:
            return present[name]
    return next(iter(present.values()))
