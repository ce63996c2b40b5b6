"""Merge arithmetic, safe weight loading, and secrets kept out of the run directory."""

import pytest
import torch


def test_merge_weight_check_catches_a_wrong_merge(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from sft_pipeline.model.merging import expected_merged_weights, weight_check

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()  # a trained-looking adapter (B starts at zero)
    expected = expected_merged_weights(model)
    merged = model.merge_and_unload()
    assert weight_check(merged, expected) < 1e-6
    with torch.no_grad():
        merged.model.layers[0].self_attn.q_proj.weight[0, 0] += 0.5
    assert weight_check(merged, expected) > 1e-3


def test_pickle_weights_refused_unless_allowed(tiny_model_dir, tmp_path):
    import shutil

    from transformers import AutoModelForCausalLM

    from sft_pipeline.model.loader import ModelRefError, load_model

    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(tiny_model_dir / "config.json", folder)
    torch.save(AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(ModelRefError, match="allow_pickle"):
        load_model(str(folder))
    assert load_model(str(folder), allow_pickle=True).num_parameters() > 0


FAKE = {
    "WANDB_API_KEY": "wandbFAKEKEY0123456789abcdef0123456789abcd",
    "HF_TOKEN": "hf_FAKEtokenQWERTYUIOPasdfghjkl",
    "ACTIVELOOP_TOKEN": "alFAKEtokenZXCVBNM987654321",
}


def test_secrets_never_reach_the_run_directory(recipe_factory, monkeypatch):
    from sft_pipeline.orchestration.pipeline import update_stages

    for key, value in FAKE.items():
        monkeypatch.setenv(key, value)
    recipe = recipe_factory(tracking={"wandb": "offline", "tensorboard": True},
                            train={"eval_strategy": "epoch", "save_strategy": "epoch", "max_steps": 2})
    run = update_stages(recipe)
    files = [p for p in run.path.rglob("*") if p.is_file()]
    assert any("wandb" in str(p) for p in files) and any("tfevents" in p.name for p in files)
    for path in files:
        blob = path.read_bytes()
        for key, value in FAKE.items():
            assert value.encode() not in blob, f"{key} leaked into {path}"
