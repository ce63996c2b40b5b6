"""llama.cpp's converter and quantizer as model/gguf_tools.py drives them, on a tiny model."""

from __future__ import annotations

import json

import pytest

from sft_pipeline.model import gguf_tools


def test_convert_then_quantize_gives_files_llama_cpp_loads(tiny_gguf, gguf_model_dir):
    """conftest's tiny_gguf is gguf_tools.convert then gguf_tools.quantize to Q4_K_M (shared with
    serve's tests): the files and log it left are what is checked here."""
    import llama_cpp

    f16, q4 = tiny_gguf / "model-F16.gguf", tiny_gguf / "model-Q4_K_M.gguf"
    assert q4.stat().st_size < f16.stat().st_size
    assert "llama_model_quantize" in (tiny_gguf / "log.txt").read_text()  # the child's C-level output went to the log
    model = llama_cpp.Llama(str(q4), verbose=False, n_ctx=64)
    try:
        vocab = json.loads((gguf_model_dir / "config.json").read_text())["vocab_size"]
        assert model.n_vocab() == vocab
        assert model.metadata["general.file_type"] == str(gguf_tools.quantization_types()["Q4_K_M"])
    finally:
        model.close()


def test_supported_architectures_come_from_the_converters_table():
    archs = gguf_tools.supported_architectures()
    assert "LlamaForCausalLM" in archs and "Qwen2ForCausalLM" in archs
    assert "OPTForCausalLM" not in archs  # the seed's Xeon model: llama.cpp has no OPT support


def test_unknown_quantization_type_is_one_line_naming_the_known_ones():
    assert gguf_tools.canonical_type("q8_0") == "Q8_0"
    with pytest.raises(gguf_tools.GGUFError, match=r"unknown GGUF quantization type 'q9_k'.*Q4_K_M"):
        gguf_tools.canonical_type("q9_k")


def test_a_converter_failure_is_one_line_with_its_log(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text('{"architectures": ["OPTForCausalLM"]}')
    with pytest.raises(gguf_tools.GGUFError, match=r"convert_hf_to_gguf.py \(f16\) failed .*full output"):
        gguf_tools.convert(tmp_path / "broken", tmp_path / "x.gguf", "f16", tmp_path / "log.txt")
    assert not (tmp_path / "x.gguf").exists()


def test_missing_converter_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setenv(gguf_tools.CONVERTER_ENV, str(tmp_path))
    with pytest.raises(gguf_tools.GGUFError, match="make install"):
        gguf_tools.converter_dir()
