"""The recipe's generate settings: one GenerationConfig (model/sampling.py) that `generate`, chat
and merge's generation_config.json share; seeded sampling, temperature 0 as greedy, and the
staleness merge and evaluate get from them."""

from __future__ import annotations

import pytest
import torch

from sft_pipeline.config import GenerateConfig, RecipeError, recipe_from_dict
from sft_pipeline.model import sampling
from sft_pipeline.model.generate import generate

PROMPTS = ["<|im_start|>user\nWhat is 2 plus 2?<|im_end|>\n<|im_start|>assistant\n",
           "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n"]
# a tiny random model at temperature 5 with no top-k or top-p cut: every draw is nearly uniform
# over 400 tokens, so two seeds giving the same 12 tokens would be a broken seed, not chance
HOT = dict(do_sample=True, temperature=5.0, top_k=0, top_p=1.0, max_new_tokens=12, batch_size=2)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


def reference_greedy(model, tokenizer, prompt: str, steps: int) -> str:
    """Argmax of the full forward at each step: greedy decoding written out, no generate()."""
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    new = []
    with torch.no_grad():
        for _ in range(steps):
            token = int(model(ids).logits[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                break
            new.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return tokenizer.decode(new, skip_special_tokens=True).strip()


def test_same_seed_same_text_other_seed_other_text(tiny):
    model, tok = tiny
    first = generate(model, tok, PROMPTS, GenerateConfig(**HOT, seed=1))
    again = generate(model, tok, PROMPTS, GenerateConfig(**HOT, seed=1))
    other = generate(model, tok, PROMPTS, GenerateConfig(**HOT, seed=2))
    assert first == again
    assert first != other and all(a != b for a, b in zip(first, other))
    greedy = generate(model, tok, PROMPTS, GenerateConfig(max_new_tokens=12, batch_size=2))
    assert first != greedy  # it sampled


def test_a_seeded_answer_leaves_torchs_random_state_as_it_was(tiny):
    model, tok = tiny
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    generate(model, tok, PROMPTS[:1], GenerateConfig(**HOT))
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("settings", [dict(do_sample=True, temperature=0.0, top_k=5, top_p=0.5),
                                      dict(do_sample=False), dict(temperature=0.0)])
def test_temperature_0_and_do_sample_false_are_exactly_greedy(tiny, settings):
    model, tok = tiny
    answers = generate(model, tok, PROMPTS, GenerateConfig(max_new_tokens=10, batch_size=1, seed=7, **settings))
    assert answers == [reference_greedy(model, tok, p, 10) for p in PROMPTS]


def test_the_recipe_decides_what_the_models_own_generation_config_would(tiny):
    """transformers fills unset values from the model's generation_config: a base that ships
    do_sample true must still answer greedily under a greedy recipe."""
    import copy

    model, tok = tiny
    sampler = copy.deepcopy(model)
    sampler.generation_config.do_sample, sampler.generation_config.temperature = True, 5.0
    sampler.generation_config.repetition_penalty = 3.0
    assert generate(sampler, tok, PROMPTS, GenerateConfig(max_new_tokens=10, batch_size=1)) == \
        [reference_greedy(model, tok, p, 10) for p in PROMPTS]


def test_repetition_penalty_applies_to_greedy_answers_and_plain_greedy_drops_it(tiny):
    model, tok = tiny
    settings = GenerateConfig(max_new_tokens=20, batch_size=2, repetition_penalty=5.0)
    greedy = [reference_greedy(model, tok, p, 20) for p in PROMPTS]
    assert generate(model, tok, PROMPTS, settings) != greedy
    assert generate(model, tok, PROMPTS, settings, plain_greedy=True) == greedy


def test_generation_config_values(tiny_tokenizer):
    greedy = sampling.generation_config(GenerateConfig(repetition_penalty=1.5, max_new_tokens=33), tiny_tokenizer)
    assert greedy.do_sample is False and greedy.repetition_penalty == 1.5 and greedy.max_new_tokens == 33
    assert greedy.temperature is None and greedy.top_k is None  # unset: not "temperature 1.0 while greedy"
    assert greedy.eos_token_id == tiny_tokenizer.eos_token_id and greedy.pad_token_id == tiny_tokenizer.pad_token_id
    hot = sampling.generation_config(GenerateConfig(do_sample=True, temperature=0.7, top_p=0.9, top_k=20, seed=5),
                                     tiny_tokenizer)
    assert (hot.do_sample, hot.temperature, hot.top_p, hot.top_k, hot.seed) == (True, 0.7, 0.9, 20, 5)
    assert sampling.generation_config(GenerateConfig(do_sample=True, temperature=0), tiny_tokenizer).do_sample is False
    assert sampling.llama_cpp_params(GenerateConfig(do_sample=True, temperature=0))["temperature"] == 0.0
    assert sampling.llama_cpp_params(GenerateConfig(do_sample=True, temperature=0.7, repetition_penalty=1.5)) == {
        "temperature": 0.7, "top_p": 1.0, "top_k": 50, "min_p": 0.0, "repeat_penalty": 1.5, "seed": 42,
        "max_tokens": 160}


def test_sampling_settings_without_do_sample_are_refused():
    with pytest.raises(RecipeError, match=r"generate: temperature 0.7 with do_sample false.*do_sample: true"):
        recipe_from_dict({"generate": {"temperature": 0.7}})
    with pytest.raises(RecipeError, match=r"top_p 0.9 with do_sample false"):
        recipe_from_dict({"generate": {"top_p": 0.9}})
    assert recipe_from_dict({"generate": {"temperature": 0}}).generate.temperature == 0  # greedy said twice
    assert recipe_from_dict({"generate": {"do_sample": True, "temperature": 0.7}}).generate.temperature == 0.7


# ---- merge writes the settings into the model; evaluate does not depend on them ----------------

SEED_ARTICLES = {"do_sample": True, "temperature": 0.8, "top_p": 0.95, "top_k": 40, "repetition_penalty": 1.5,
                 "seed": 11, "max_new_tokens": 12}


def _merged_run(recipe_factory, **sections):
    from sft_pipeline.orchestration.pipeline import update_stages

    return update_stages(recipe_factory(generate=SEED_ARTICLES, **sections), until="merge")


@pytest.fixture(scope="module")
def merged_run(tmp_path_factory, tiny_model_dir):
    """A LoRA run through merge under SEED_ARTICLES, made once: the tests below only read it
    (merge's files, fingerprints, `generate --model merged`)."""
    from helpers import lima_rows, tiny_recipe, write_jsonl

    from sft_pipeline.orchestration.pipeline import update_stages

    root = tmp_path_factory.mktemp("merged")
    write_jsonl(root / "data" / "train.jsonl", lima_rows(12, multi_every=4))
    write_jsonl(root / "data" / "test.jsonl", lima_rows(4))
    return update_stages(tiny_recipe(root, tiny_model_dir, root / "data", generate=SEED_ARTICLES), until="merge")


def test_merge_writes_the_recipes_generation_config_and_the_merged_model_uses_it(merged_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    run = merged_run
    folder = run.path / "merge" / "model"
    saved = GenerationConfig.from_pretrained(folder)
    for key, value in SEED_ARTICLES.items():
        assert getattr(saved, key) == value, key
    model, tok = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    assert model.generation_config.repetition_penalty == 1.5 and model.generation_config.do_sample
    enc = tok(PROMPTS[0], return_tensors="pt", add_special_tokens=False)
    with sampling.seeded(3):
        by_default = model.generate(**enc)  # nothing passed: the saved file decides
    with sampling.seeded(3):
        explicit = model.generate(**enc, generation_config=sampling.generation_config(
            GenerateConfig(**SEED_ARTICLES), tok, model.generation_config))
    assert torch.equal(by_default, explicit) and by_default.shape[1] == enc["input_ids"].shape[1] + 12
    greedy = model.generate(**enc, do_sample=False, repetition_penalty=1.0, max_new_tokens=12)
    assert not torch.equal(by_default, greedy)


def test_method_full_writes_a_new_file_and_leaves_trains_alone(recipe_factory):
    import os

    from transformers import GenerationConfig

    run = _merged_run(recipe_factory, method="full")
    trained, merged = run.path / "train" / "model", run.path / "merge" / "model"
    assert os.path.samefile(trained / "model.safetensors", merged / "model.safetensors")  # still hard links
    assert not os.path.samefile(trained / "generation_config.json", merged / "generation_config.json")
    assert GenerationConfig.from_pretrained(merged).repetition_penalty == 1.5
    assert GenerationConfig.from_pretrained(trained).repetition_penalty in (None, 1.0)


def test_sampling_keys_make_merge_stale_not_evaluate_and_merged_stays_usable(merged_run, tmp_path):
    """merge's generation_config.json depends on them; evaluate's greedy pairs do not. A merge
    stale only in them still serves `generate --model merged` (its weights do not depend on
    them), with a note; a change to what the weights depend on is refused."""
    import json

    import yaml
    from typer.testing import CliRunner

    from sft_pipeline.cli import app
    from sft_pipeline.stages import open_run_directory

    run = merged_run
    tree = json.loads(run.recipe.model_dump_json())
    tree["generate"]["temperature"] = 0.3
    changed = open_run_directory(run.path, recipe_from_dict(tree))
    assert run.fingerprint("merge") != changed.fingerprint("merge")
    assert run.fingerprint("evaluate") == changed.fingerprint("evaluate")
    tree["generate"]["max_new_tokens"] = 5
    assert run.fingerprint("evaluate") != open_run_directory(run.path, recipe_from_dict(tree)).fingerprint("evaluate")

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(json.loads(run.recipe.model_dump_json())))
    runner = CliRunner()
    result = runner.invoke(app, ["generate", str(path), "-p", "Hi", "--model", "merged",
                                 "--set", "generate.temperature=0.3"])
    assert result.exit_code == 0, result.output
    assert "generation_config.json was written for other generate settings" in result.output
    result = runner.invoke(app, ["generate", str(path), "-p", "Hi", "--model", "merged", "--set", "lora.r=8"])
    assert result.exit_code == 2 and "stage 'merge' is stale" in result.output
