"""`sft-pipeline chat`: piped stdin, history rendered with the recipe's template (checked on what
was sent to the model), /reset, /exit, streaming in pieces, context truncation, the llama.cpp
backend on a tiny GGUF against llama_cpp's own greedy answer, and one-line refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sft_pipeline.chat import backends
from sft_pipeline.chat.history import History, TooLong
from sft_pipeline.chat.session import Output, chat
from sft_pipeline.cli import app
from sft_pipeline.config import GenerateConfig, TemplateConfig
from sft_pipeline.data.prompts import render_prompt

runner = CliRunner()


def recipe_file(tmp_path: Path, model_ref: Path, **generate) -> Path:
    path = tmp_path / "r.yaml"
    tree = {"name": "chat", "run_dir": str(tmp_path / "run"), "model": {"ref": str(model_ref)},
            "generate": {"max_new_tokens": 6, **generate}}
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.fixture
def sent(monkeypatch):
    """Every (backend, prompt text, answer) that reached a backend: what chat really rendered."""
    calls: list[tuple[str, str, str]] = []
    for cls in (backends.TransformersBackend, backends.LlamaCppBackend):
        real = cls.answer

        def answer(self, text, seed, emit, real=real, name=cls.__name__):
            result = real(self, text, seed, emit)
            calls.append((name, text, result))
            return result

        monkeypatch.setattr(cls, "answer", answer)
    return calls


def one_line_error(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip().startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def test_two_turns_keep_history_reset_clears_it_exit_ends(tmp_path, tiny_model_dir, tiny_tokenizer, sent):
    recipe = recipe_file(tmp_path, tiny_model_dir)
    stdin = "What is 2 plus 2?\nAnd times two?\n/reset\nName a colour.\n/exit\nNever read.\n"
    result = runner.invoke(app, ["chat", str(recipe), "--model", "base"], input=stdin)
    assert result.exit_code == 0, result.output
    assert [name for name, _, _ in sent] == ["TransformersBackend"] * 3  # nothing after /exit
    (_, first, a1), (_, second, _), (_, third, _) = sent
    template = TemplateConfig()
    user = lambda text: {"role": "user", "content": text}  # noqa: E731
    assert first == render_prompt([user("What is 2 plus 2?")], template, tiny_tokenizer)
    # the second prompt is the whole conversation: the first exchange, then the new question
    assert second == render_prompt([user("What is 2 plus 2?"), {"role": "assistant", "content": a1},
                                    user("And times two?")], template, tiny_tokenizer)
    assert second.startswith(first)
    assert third == render_prompt([user("Name a colour.")], template, tiny_tokenizer)  # /reset forgot it
    assert "> What is 2 plus 2?" in result.stdout and "> Never read." not in result.stdout
    assert "(conversation cleared)" in result.output


def test_end_of_input_ends_cleanly_and_the_same_seed_gives_the_same_transcript(tmp_path, tiny_model_dir):
    recipe = recipe_file(tmp_path, tiny_model_dir, do_sample=True, temperature=5.0, top_k=0, max_new_tokens=10)
    stdin = "Hello\nWhat is 3 plus 3?\n"  # no /exit: the end of the pipe ends the session
    runs = [runner.invoke(app, ["chat", str(recipe), "--model", "base"] + extra, input=stdin)
            for extra in ([], [], ["--set", "generate.seed=5"])]
    assert [r.exit_code for r in runs] == [0, 0, 0], runs[0].output
    assert runs[0].stdout == runs[1].stdout
    assert runs[0].stdout != runs[2].stdout


def test_answers_stream_in_pieces_while_generating(tiny_model_dir, tiny_tokenizer):
    """Pieces arrive before generation ends (counted in forward passes), and add up to the answer."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    settings = GenerateConfig(do_sample=True, temperature=3.0, top_k=0, max_new_tokens=24)
    backend = backends.TransformersBackend(model, tiny_tokenizer, settings, None)
    forwards = []
    model.register_forward_hook(lambda *_: forwards.append(1))
    pieces: list[tuple[str, int]] = []
    text = render_prompt([{"role": "user", "content": "Tell me about water."}], TemplateConfig(), tiny_tokenizer)
    answer = backend.answer(text, 0, lambda piece: pieces.append((piece, len(forwards))))
    assert len(pieces) > 1
    assert pieces[0][1] < len(forwards)  # the first piece came while the model still had tokens to make
    assert "".join(p for p, _ in pieces).strip() == answer


def test_history_drops_the_oldest_exchanges_to_fit_the_context(tiny_tokenizer):
    history = History(TemplateConfig(), tiny_tokenizer)
    history.add("What is 1 plus 1?", "TL;DR: 2.")
    history.add("And 2 plus 2?", "TL;DR: 4.")
    count = lambda text: len(tiny_tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    full = count(history.prompt("And 3 plus 3?"))
    text, dropped = history.fit("And 3 plus 3?", count, full + 10, 10)
    assert dropped == 0 and "1 plus 1" in text
    text, dropped = history.fit("And 3 plus 3?", count, full + 9, 10)  # one token short: the oldest goes
    assert dropped == 1 and "1 plus 1" not in text and "2 plus 2" in text
    assert [t["content"] for t in history.turns] == ["And 2 plus 2?", "TL;DR: 4."]
    with pytest.raises(TooLong, match=r"over the model's 5-token context"):
        history.fit("And 3 plus 3?", count, 5, 1)
    assert history.turns == []


def test_a_session_says_when_history_was_dropped(tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    backend = backends.TransformersBackend(model, tiny_tokenizer, GenerateConfig(max_new_tokens=4), None)
    backend.context = 40  # a model with a short context: two exchanges of these do not fit
    notes: list[str] = []
    sent: list[str] = []
    real = backend.answer
    backend.answer = lambda text, seed, emit: sent.append(text) or real(text, seed, emit)
    lines = iter(["What is the capital of France?", "And of Spain?", "And of Italy?"])
    answered = chat(backend, History(TemplateConfig(), tiny_tokenizer), 4, 0, lines,
                    Output(text=lambda _: None, note=notes.append), echo=False)
    assert answered == 3
    assert any("dropped the oldest" in n and "40-token context" in n for n in notes)
    assert "France" not in sent[-1] and "Italy" in sent[-1]


def test_ctrl_c_ends_the_session_cleanly(tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    backend = backends.TransformersBackend(model, tiny_tokenizer, GenerateConfig(max_new_tokens=3), None)

    def lines():
        yield "Hello"
        raise KeyboardInterrupt

    out: list[str] = []
    assert chat(backend, History(TemplateConfig(), tiny_tokenizer), 3, 0, lines(), Output(out.append, out.append),
                echo=False) == 1


# ---- the GGUF backend ------------------------------------------------------------------------

@pytest.fixture(scope="session")
def lively_gguf_dir(gguf_model_dir, tmp_path_factory) -> Path:
    """The tiny GGUF-able model with its matrices redrawn at std 0.3 (seeded): at the usual 0.02
    init its greedy answer is newlines only, which any two decoders agree on; this one's greedy
    answers are words, so agreeing on them means something."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("lively") / "model"
    shutil.copytree(gguf_model_dir, folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def gguf_run(lively_gguf_dir, tmp_path_factory) -> Path:
    """A run directory laid out as export leaves it: export/model-F16.gguf of the tiny model."""
    from sft_pipeline.model import gguf_tools

    run = tmp_path_factory.mktemp("gguf-run") / "run"
    (run / "export").mkdir(parents=True)
    gguf_tools.convert(lively_gguf_dir, run / "export" / "model-F16.gguf", "f16", run / "export" / "log.txt")
    return run


def test_gguf_chat_answers_as_llama_cpp_does_for_the_same_text(gguf_run, lively_gguf_dir, tmp_path, sent):
    import llama_cpp
    from transformers import AutoTokenizer

    recipe = recipe_file(tmp_path, lively_gguf_dir, max_new_tokens=8)
    result = runner.invoke(app, ["chat", str(recipe), "--model", "gguf", "--run-dir", str(gguf_run)],
                           input="What is the capital of France?\n/exit\n")
    assert result.exit_code == 0, result.output
    assert "model-F16.gguf" in result.output
    [(name, text, answer)] = sent
    assert name == "LlamaCppBackend"
    tok = AutoTokenizer.from_pretrained(lively_gguf_dir)
    assert text == render_prompt([{"role": "user", "content": "What is the capital of France?"}],
                                 TemplateConfig(), tok)  # the recipe's template, as transformers renders it
    llm = llama_cpp.Llama(str(gguf_run / "export" / "model-F16.gguf"), n_ctx=512, verbose=False)
    try:
        ids = llm.tokenize(text.encode(), add_bos=False, special=True)
        assert ids == tok(text, add_special_tokens=False)["input_ids"]  # both backends see the same ids
        direct = llm.create_completion(ids, max_tokens=8, temperature=0.0, repeat_penalty=1.0)["choices"][0]["text"]
    finally:
        llm.close()
    assert answer == direct.strip() and len(answer.split()) > 2
    assert answer in result.stdout


def test_gguf_type_is_chosen_by_quant_and_refused_when_absent(gguf_run, tmp_path):
    assert backends.find_gguf(gguf_run, None, None, "r.yaml").name == "model-F16.gguf"
    assert backends.find_gguf(gguf_run, "f16", None, "r.yaml").name == "model-F16.gguf"
    with pytest.raises(backends.ChatError, match=r"no .*model-Q4_K_M.gguf \(it has F16\): run `sft-pipeline export"):
        backends.find_gguf(gguf_run, "q4_k_m", None, "r.yaml")
    explicit = gguf_run / "export" / "model-F16.gguf"
    assert backends.find_gguf(tmp_path, None, explicit, "r.yaml") == explicit


def test_missing_export_or_merge_is_one_line_naming_the_command(tmp_path, tiny_model_dir):
    recipe = recipe_file(tmp_path, tiny_model_dir)
    result = runner.invoke(app, ["chat", str(recipe), "--model", "gguf"], input="Hi\n")
    assert result.exit_code == 2
    assert f"sft-pipeline export {recipe}" in one_line_error(result)
    result = runner.invoke(app, ["chat", str(recipe), "--model", "merged"], input="Hi\n")
    assert result.exit_code == 2
    assert "stage 'merge' has not run" in one_line_error(result) and "sft-pipeline merge" in result.output
    result = runner.invoke(app, ["chat", str(recipe), "--model", "base", "--quant", "Q8_0"], input="Hi\n")
    assert result.exit_code == 2 and "--model gguf" in one_line_error(result)
    result = runner.invoke(app, ["chat", str(recipe), "--model", "llama"], input="Hi\n")
    assert result.exit_code == 2 and "base, trained, merged, gguf" in one_line_error(result)
    # 'adapter', trained's earlier name, is still taken: it asks for train's result, not an unknown model
    result = runner.invoke(app, ["chat", str(recipe), "--model", "adapter"], input="Hi\n")
    assert result.exit_code == 2 and "stage 'train' has not run" in one_line_error(result)
