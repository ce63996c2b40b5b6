"""Shared fixtures: a tiny tokenizer (trained here, ChatML template) and tiny models built from
a config and saved as local safetensors checkpoints. Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import TOOL_CHATML, lima_rows, make_llama_tokenizer, save_tiny_llama, tiny_recipe, write_jsonl


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama with the tiny tokenizer, saved as a local checkpoint: a valid model.ref."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def tool_tokenizer(tiny_model_dir):
    """The tiny tokenizer with a chat template that renders tool definitions, calls and results."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = TOOL_CHATML
    return tok


@pytest.fixture(scope="session")
def tool_model_dir(tiny_model_dir, tmp_path_factory, tool_tokenizer) -> Path:
    """The tiny model, its tokenizer's chat template the tool-capable one: a valid model.ref."""
    import shutil

    folder = tmp_path_factory.mktemp("tool-llama") / "model"
    shutil.copytree(tiny_model_dir, folder)
    tool_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def llama_tokenizer(tmp_path_factory):
    """A tiny tokenizer with Llama 2's special tokens and layout ([INST] ... [/INST] ...</s>)."""
    return make_llama_tokenizer(tmp_path_factory.mktemp("llama-tok"))


@pytest.fixture
def lima_dir(tmp_path) -> Path:
    write_jsonl(tmp_path / "data" / "train.jsonl", lima_rows(12, multi_every=4))
    write_jsonl(tmp_path / "data" / "test.jsonl", lima_rows(4))
    return tmp_path / "data"


@pytest.fixture
def recipe_factory(tmp_path, tiny_model_dir, lima_dir):
    """A recipe for the tiny model and data, with overrides as a nested dict."""

    def make(**sections):
        return tiny_recipe(tmp_path, tiny_model_dir, lima_dir, **sections)

    return make


@pytest.fixture(scope="session")
def gguf_model_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama built from a config with the bundled SmolLM2 tokenizer: llama.cpp's converter
    recognises that tokenizer's pre-tokenizer (it refuses the tiny trained one), so this is the
    smallest model the GGUF path (export, chat --model gguf, serve) can be tested on."""
    from helpers import save_tiny_llama_smol_vocab

    return save_tiny_llama_smol_vocab(tmp_path_factory.mktemp("gguf-llama") / "model")


@pytest.fixture(scope="session")
def tiny_gguf(gguf_model_dir, tmp_path_factory) -> Path:
    """A folder with model-F16.gguf (llama.cpp's converter on gguf_model_dir) and model-Q4_K_M.gguf
    (its quantizer on that), both through gguf_tools, and log.txt with their output: made once per
    session because the converter is a child process of several seconds, and test_gguf_tools and
    serve's tests need the same files."""
    from sft_pipeline.model import gguf_tools

    folder = tmp_path_factory.mktemp("tiny-gguf")
    gguf_tools.convert(gguf_model_dir, folder / "model-F16.gguf", "f16", folder / "log.txt")
    gguf_tools.quantize(folder / "model-F16.gguf", folder / "model-Q4_K_M.gguf", "q4_k_m", folder / "log.txt")
    return folder
