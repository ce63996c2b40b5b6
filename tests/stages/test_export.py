"""The export stage (stages/export.py): GGUF files from merge/model, the recipe's template inside
them, the Modelfile, verify.json; and its refusals, each one line with nothing half-written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import lima_rows, write_jsonl

from sft_pipeline.config import RecipeError, recipe_from_dict
from sft_pipeline.model import gguf_tools
from sft_pipeline.orchestration.pipeline import update_stage, update_stages
from sft_pipeline.rundir.directory import RunDirectory, StageError
from sft_pipeline.rundir.files import read_json
from sft_pipeline.stages import open_run_directory

SYSTEM = "Answer in one line."


def _tree(root: Path, model: Path, **sections) -> dict:
    tree = {
        "name": "exp", "run_dir": str(root / "run"), "data": {"source": str(root / "data")},
        "model": {"ref": str(model)}, "pack": {"seq_length": 64}, "lora": {"r": 4, "lora_alpha": 8},
        # the seed-style custom format with a system prompt: the files must carry a generated template
        "template": {"kind": "custom", "system": SYSTEM, "user": "Q: {content}", "assistant": "A: {content}"},
        "train": {"max_steps": 2, "per_device_train_batch_size": 2, "logging_steps": 1, "learning_rate": 1e-2,
                  "eval_strategy": "no", "save_strategy": "no"},
        "tracking": {"wandb": "off", "tensorboard": False},
        "generate": {"max_new_tokens": 8, "batch_size": 4},
        "export": {"verify_prompts": 2},
    }
    for key, value in sections.items():
        tree[key] = {**tree.get(key, {}), **value} if isinstance(value, dict) else value
    return tree


@pytest.fixture(scope="module")
def exported(tmp_path_factory, gguf_model_dir) -> RunDirectory:
    """A run of the tiny GGUF-able Llama through merge, then export with the default types."""
    root = tmp_path_factory.mktemp("export")
    write_jsonl(root / "data" / "train.jsonl", lima_rows(12, multi_every=4))
    write_jsonl(root / "data" / "test.jsonl", lima_rows(4))
    run = update_stages(recipe_from_dict(_tree(root, gguf_model_dir)))
    assert update_stage(run, "export")
    return run


def _with(run: RunDirectory, **sections) -> RunDirectory:
    tree = json.loads(run.recipe.model_dump_json())
    for key, value in sections.items():
        tree[key] = {**tree[key], **value}
    return open_run_directory(run.path, recipe_from_dict(tree))


def test_the_files_follow_the_naming_contract(exported):
    folder = exported.path / "export"
    names = sorted(p.name for p in folder.iterdir())
    assert names == [".complete", "Modelfile", "generation_config.json", "model-F16.gguf", "model-Q4_K_M.gguf",
                     "model-Q8_0.gguf", "summary.json", "tools.log", "verify.json"]
    for given in ("f16", "Q8_0", "q4_k_m"):
        assert gguf_tools.gguf_file(exported, given).is_file()
        assert gguf_tools.gguf_file(exported.path, given) == gguf_tools.gguf_file(exported, given)
    assert gguf_tools.gguf_file(exported, "q4_k_m").name == "model-Q4_K_M.gguf"
    assert (folder / "generation_config.json").read_bytes() == \
        (exported.path / "merge" / "model" / "generation_config.json").read_bytes()
    assert exported.stage_state("export") == "complete"
    summary = read_json(folder / "summary.json")
    assert summary["files"] == {"F16": "model-F16.gguf", "Q8_0": "model-Q8_0.gguf", "Q4_K_M": "model-Q4_K_M.gguf"}
    assert summary["modelfile_from"] == "Q4_K_M"
    sizes = summary["sizes_mib"]
    assert sizes["F16"] > sizes["Q8_0"] > sizes["Q4_K_M"]
    for cost in summary["costs"].values():
        assert cost["seconds"] > 0 and 10 < cost["peak_rss_mib"] < 4096  # the child's own peak, not pytest's
    # hidden 64 is not a multiple of 256: Q4_K_M keeps no tensor in Q4_K, every matrix falls back
    assert "Q4_K" not in summary["costs"]["Q4_K_M"]["tensor_types"] and summary["costs"]["Q4_K_M"]["fallback_tensors"] > 0
    assert summary["costs"]["Q8_0"]["tensor_types"]["Q8_0"] > 0


def test_f16_greedy_tokens_equal_transformers(exported):
    """verify.json's claim checked here, independently: transformers' greedy answer on
    merge/model (fp32) against F16's tokens, and the teacher-forced agreement rates."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    verify = read_json(exported.path / "export" / "verify.json")
    assert verify["tokens"] == 20 and verify["prompts"] == 2 and verify["f16_greedy_equal"]
    f16 = verify["files"]["F16"]
    assert f16["agreement_rate"] == 1.0 and f16["real_disagreements"] == 0 and f16["tokens_compared"] > 0
    assert all(row["greedy_equal"] and row["tokenizer_agrees"] for row in f16["prompts"])
    for name in ("Q8_0", "Q4_K_M"):
        assert 0 <= verify["files"][name]["agreement_rate"] <= 1
        assert len(verify["files"][name]["prompts"]) == 2

    merged = exported.path / "merge" / "model"
    tok = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    import datasets

    prompt = datasets.load_from_disk(str(exported.path / "template" / "eval"))["prompt"][0]
    ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False,
                             eos_token_id=verify["stop_ids"], pad_token_id=tok.pad_token_id)
    assert f16["prompts"][0]["tokens"] == out[0, ids.shape[1]:].tolist()


def test_the_files_carry_the_recipes_template_and_answer_chats(exported):
    """Every file's tokenizer.chat_template renders what render_prompt renders, and
    llama-cpp-python's chat completion (which formats with it) answers."""
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from sft_pipeline.data.prompts import render_prompt

    messages = [{"role": "user", "content": "What is 1 plus 1?"}, {"role": "assistant", "content": "TL;DR: 2."},
                {"role": "user", "content": "And 2 plus 2?"}]
    expected = render_prompt(messages, exported.recipe.template)
    assert expected.startswith(SYSTEM + "\n\nQ: What is 1 plus 1?") and expected.endswith("\n\nA: ")
    for name in ("F16", "Q8_0", "Q4_K_M"):
        llm = Llama(str(gguf_tools.gguf_file(exported, name)), n_ctx=256, verbose=False)
        try:
            template = llm.metadata["tokenizer.chat_template"]
            assert Jinja2ChatFormatter(template, eos_token="", bos_token="")(messages=messages).prompt == expected
            reply = llm.create_chat_completion(messages=messages, max_tokens=4, temperature=0)
            assert isinstance(reply["choices"][0]["message"]["content"], str)
        finally:
            llm.close()
    # the template went in through a staging copy of hard links: merge's own files are as merge wrote them
    merged = json.loads((exported.path / "merge" / "model" / "tokenizer_config.json").read_text())
    assert merged.get("chat_template") != template and "Q: " not in json.dumps(merged)


def test_the_modelfile(exported):
    text = (exported.path / "export" / "Modelfile").read_text()
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines[0] == "FROM ./model-Q4_K_M.gguf"
    assert lines[1].startswith('TEMPLATE """') and '{{ "Q: " }}{{ $m.Content }}' in lines[1]
    assert f'SYSTEM """{SYSTEM}"""' in lines
    assert 'PARAMETER stop "<|im_end|>"' in lines  # the SmolLM2 tokenizer's EOS: what training appended
    assert "PARAMETER temperature 0" in lines and "PARAMETER num_predict 8" in lines


def test_export_is_fingerprinted(exported):
    assert not update_stage(exported, "export")  # up to date
    assert _with(exported, export={"verify_tokens": 5}).stage_state("export") == "stale"
    assert _with(exported, generate={"do_sample": True, "temperature": 0.5}).stage_state("export") == "stale"  # the Modelfile's
    assert _with(exported, merge={"tolerance": 1e-2}).stage_state("export") == "stale"  # upstream
    assert _with(exported, evaluate={"pairs": 1}).stage_state("export") == "complete"


def test_a_missing_or_stale_merge_is_one_line(exported, tmp_path):
    fresh = open_run_directory(tmp_path / "empty", exported.recipe)
    with pytest.raises(StageError, match=r"^stage 'merge' has not run in .*: run `sft-pipeline merge <recipe>` first$"):
        update_stage(fresh, "export")
    assert not (tmp_path / "empty" / "export").exists()
    frozen = (exported.path / "recipe.yaml").read_bytes()
    try:
        with pytest.raises(StageError, match=r"stage 'merge' is stale \(the recipe changed\)"):
            update_stage(_with(exported, merge={"tolerance": 1e-2}), "export")
    finally:  # a stage that starts freezes its recipe: the later tests use the run as it was
        (exported.path / "recipe.yaml").write_bytes(frozen)


def test_an_unknown_quantization_type_is_refused_before_any_work(exported):
    from sft_pipeline.orchestration.preflight import check_all

    bad = _with(exported, export={"types": ["f16", "q9_k"]})
    shutil.rmtree(exported.path / ".partial" / "export", ignore_errors=True)  # left by a refused stage before
    with pytest.raises(RecipeError, match=r"^export.types: unknown GGUF quantization type 'Q9_K' \(llama.cpp knows: .*Q4_K_M"):
        check_all(bad.recipe)
    with pytest.raises(RecipeError, match="export.types: unknown GGUF quantization type 'Q9_K'"):
        update_stage(bad, "export")
    assert not (exported.path / ".partial" / "export").exists()  # refused before its work folder
    with pytest.raises(RecipeError, match=r"export.types: F16 listed twice"):
        recipe_from_dict({"export": {"types": ["f16", "F16"]}})


def test_a_failed_export_leaves_no_complete_looking_folder(exported, tmp_path, monkeypatch):
    """A failure halfway: F16 converted and Q8_0 quantized for real, then the Q4_K_M quantization
    fails (injected: the quantizer fails only on inputs this test cannot make cheaply). The
    stage's folder never appears and the manifest records nothing."""
    copy = tmp_path / "run"
    shutil.copytree(exported.path, copy, ignore=shutil.ignore_patterns("export"), symlinks=True)
    manifest = read_json(copy / "manifest.json")
    manifest["stages"].pop("export")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    real = gguf_tools.quantize

    def quantize(src, dst, type_name, log, threads=0):
        if type_name == "Q4_K_M":
            raise gguf_tools.GGUFError("llama_model_quantize (Q4_K_M) failed with exit status 1: injected")
        return real(src, dst, type_name, log, threads)

    monkeypatch.setattr(gguf_tools, "quantize", quantize)
    run = open_run_directory(copy, exported.recipe)
    with pytest.raises(gguf_tools.GGUFError, match=r"llama_model_quantize \(Q4_K_M\) failed"):
        update_stage(run, "export")
    assert (copy / ".partial" / "export" / "model-Q8_0.gguf").is_file()  # it did fail halfway
    assert not (copy / "export").exists() and run.stage_state("export") == "missing"
    assert "export" not in read_json(copy / "manifest.json")["stages"]
    assert not (copy / ".partial" / "export" / ".complete").exists()


@pytest.fixture(scope="module")
def opt_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """A tiny OPT (the seed's Xeon architecture) from a config: llama.cpp's converter has no OPT."""
    from transformers import AutoTokenizer, OPTConfig, OPTForCausalLM

    folder = tmp_path_factory.mktemp("opt") / "model"
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = OPTConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2,
                       max_position_embeddings=128, word_embed_proj_dim=16)
    OPTForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_an_unsupported_architecture_is_refused_by_validate_and_export(opt_dir, tmp_path):
    from sft_pipeline.orchestration.preflight import check_all

    write_jsonl(tmp_path / "data" / "train.jsonl", lima_rows(4))
    explicit = recipe_from_dict(_tree(tmp_path, opt_dir))
    with pytest.raises(RecipeError, match=r"^model.ref .*: OPTForCausalLM is not an architecture llama.cpp's converter "
                                          r"supports, so this model cannot be exported to GGUF"):
        check_all(explicit)
    tree = _tree(tmp_path, opt_dir)
    del tree["export"]
    implicit = recipe_from_dict(tree)
    check_all(implicit)  # no export section: an OPT recipe that trains and merges is valid
    with pytest.raises(RecipeError, match="OPTForCausalLM is not an architecture"):
        update_stage(open_run_directory(implicit.resolved_run_dir(), implicit), "export")  # the stage's preflight always checks
    assert not (tmp_path / "run").exists()


def test_the_export_stage_checks_merge_model_itself(exported, tmp_path):
    """A model.ref the preflight could not read (a hub id): the stage reads merge/model's config.json."""
    from sft_pipeline.stages import export

    copy = tmp_path / "run"
    shutil.copytree(exported.path, copy, symlinks=True)
    config = copy / "merge" / "model" / "config.json"
    data = json.loads(config.read_text())
    config.unlink()  # a hard link? never written through
    config.write_text(json.dumps({**data, "architectures": ["OPTForCausalLM"]}))
    with pytest.raises(export.ExportError, match=r"merge/model/config.json: OPTForCausalLM is not an architecture"):
        export.produce(open_run_directory(copy, exported.recipe), tmp_path / "out")


def test_cli_export(exported):
    from typer.testing import CliRunner

    from sft_pipeline.cli import app

    result = CliRunner().invoke(app, ["export", str(exported.path)])
    assert result.exit_code == 0, result.output
    assert "model-Q4_K_M.gguf" in result.output and "(FROM model-Q4_K_M.gguf)" in result.output
    bad = CliRunner().invoke(app, ["export", str(exported.path), "--set", "export.types=[f16,q9]"])
    assert bad.exit_code == 2
    assert bad.output.strip().startswith("error: export.types: unknown GGUF quantization type 'Q9'")
    assert len(bad.output.strip().splitlines()) == 1
