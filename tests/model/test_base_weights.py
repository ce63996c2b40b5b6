"""Training leaves the base model alone, and no model code from a checkpoint runs unless asked.

- After `train`, the base checkpoint on disk is bitwise what it was (every tensor hashed), and so
  are the frozen base parameters of the model that was trained (only LoRA weights moved).
- Without `model.trust_remote_code: true`, no from_pretrained call in the pipeline gets
  trust_remote_code=True, and a checkpoint's own Python file (auto_map) never runs.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch


def _tensor_hashes(folder) -> dict[str, str]:
    from safetensors import safe_open

    hashes = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as fh:
            for name in fh.keys():
                t = fh.get_tensor(name).contiguous()
                hashes[name] = hashlib.sha256(t.view(torch.uint8).numpy().tobytes()).hexdigest() + str(t.dtype)
    return hashes


def _file_hashes(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_train_leaves_the_base_weights_bitwise_unchanged(tmp_path, tiny_model_dir, recipe_factory, monkeypatch):
    from safetensors.torch import load_file

    from sft_pipeline.model import build
    from sft_pipeline.orchestration.pipeline import update_stages
    from sft_pipeline.stages import prepare

    base_dir = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base_dir)
    tensors_before, files_before = _tensor_hashes(base_dir), _file_hashes(base_dir)
    original = load_file(str(next(base_dir.glob("*.safetensors"))))
    assert len(tensors_before) == len(original) > 10

    built = []
    real_build = build.build_model

    def spy_build(*args, **kwargs):
        model = real_build(*args, **kwargs)
        built.append(model)
        return model

    monkeypatch.setattr(prepare, "build_model", spy_build)  # imported by name at the top of prepare
    monkeypatch.setattr(build, "build_model", spy_build)  # train imports it when it runs
    recipe = recipe_factory(model={"ref": str(base_dir)},
                            train={"max_steps": 3, "learning_rate": 5e-2, "save_strategy": "no"})
    run = update_stages(recipe, until="train")

    # training did move the adapter: otherwise "the base did not change" would prove nothing
    start = load_file(str(run.path / "prepare" / "adapter" / "adapter_model.safetensors"))
    trained = load_file(str(run.path / "train" / "adapter" / "adapter_model.safetensors"))
    assert any(not torch.equal(start[k], trained[k]) for k in start)

    assert _tensor_hashes(base_dir) == tensors_before
    assert _file_hashes(base_dir) == files_before

    model = built[-1]  # the one train built and trained (prepare built the first)
    assert len(built) == 2
    # loaded in the training weights' dtype (bf16 on a bf16 CPU), norms then cast back to fp32
    weights_dtype = getattr(torch, json.loads((run.path / "prepare" / "prepare.json").read_text())["dtype"])
    compared = 0
    for name, param in model.get_base_model().named_parameters():
        if "lora_" in name:
            continue
        assert not param.requires_grad, f"{name} is trainable"
        key = name.replace(".base_layer", "")
        if key in original:
            loaded = original[key].to(weights_dtype).to(param.dtype)
            assert torch.equal(param.detach().cpu(), loaded), f"{key} changed in training"
            compared += 1
    assert compared == len(original)


def _spy_from_pretrained(monkeypatch, calls: list):
    import transformers
    from peft import PeftModel

    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer, transformers.AutoConfig, PeftModel):
        real = cls.from_pretrained

        def spy(*args, _real=real, _name=cls.__name__, **kwargs):
            calls.append((_name, kwargs.get("trust_remote_code")))
            return _real(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)


def test_no_call_gets_trust_remote_code_unless_the_recipe_sets_it(recipe_factory, monkeypatch):
    from sft_pipeline.orchestration.pipeline import update_stages

    calls: list = []
    _spy_from_pretrained(monkeypatch, calls)
    update_stages(recipe_factory())  # all six stages
    names = {name for name, _ in calls}
    assert {"AutoModelForCausalLM", "AutoTokenizer", "AutoConfig"} <= names, calls
    assert [c for c in calls if c[1]] == []


CANARY = '''
from pathlib import Path
from transformers import LlamaConfig, LlamaForCausalLM

Path({marker!r}).write_text("remote code ran")


class CanaryConfig(LlamaConfig):
    pass


class CanaryForCausalLM(LlamaForCausalLM):
    config_class = CanaryConfig
'''


@pytest.mark.parametrize("trust", [False, True])
def test_checkpoint_code_runs_only_with_trust_remote_code(tmp_path, tiny_model_dir, recipe_factory, trust):
    """A checkpoint whose config.json points (auto_map) at its own Python file, which writes a
    marker when imported. prepare loads config, tokenizer and model: the file must not run unless
    the recipe says trust_remote_code: true (which shows the marker would appear)."""
    from sft_pipeline.orchestration.pipeline import update_stages

    folder = tmp_path / "canary-model"
    shutil.copytree(tiny_model_dir, folder)
    marker = tmp_path / f"ran-{trust}"
    (folder / "canary.py").write_text(CANARY.format(marker=str(marker)))
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "canary.CanaryConfig", "AutoModelForCausalLM": "canary.CanaryForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))

    recipe = recipe_factory(model={"ref": str(folder), "trust_remote_code": trust})
    update_stages(recipe, until="prepare")
    assert marker.exists() == trust
