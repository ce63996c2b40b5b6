"""bfd packing is allowed only where a probe shows packed samples cannot see each other."""

import pytest

from sft_pipeline.training.isolation import IsolationError, check_bfd, probe


@pytest.mark.parametrize("attn", [None, "eager", "sdpa"])
def test_llama_keeps_packed_samples_apart_on_every_cpu_backend(tiny_model_dir, attn):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_model_dir)
    assert probe(config, attn) < 1e-5
    check_bfd(config, attn)


def test_opt_lets_packed_samples_attend_and_bfd_is_refused():
    from transformers import OPTConfig

    assert probe(OPTConfig(), "sdpa") > 1e-2  # OPT derives positions from the attention mask, not position_ids
    with pytest.raises(IsolationError, match=r"^pack.strategy: bfd: opt with attention 'sdpa' lets packed samples attend"):
        check_bfd(OPTConfig(), "sdpa")


def test_a_backend_that_cannot_be_built_is_refused_not_assumed(tiny_model_dir):
    from transformers import AutoConfig

    with pytest.raises(IsolationError, match=r"^pack.strategy: bfd: cannot check"):
        check_bfd(AutoConfig.from_pretrained(tiny_model_dir), "no_such_attention")


def test_pack_stage_refuses_bfd_for_opt_and_none_works(tmp_path, recipe_factory, tiny_model_dir, tiny_tokenizer):
    from transformers import OPTConfig

    from sft_pipeline.orchestration.pipeline import update_stage
    from sft_pipeline.stages import open_run_directory

    opt = tmp_path / "tiny-opt"
    opt.mkdir()
    OPTConfig(num_hidden_layers=1, hidden_size=16, ffn_dim=32, num_attention_heads=2, word_embed_proj_dim=16,
              vocab_size=len(tiny_tokenizer)).save_pretrained(opt)
    tiny_tokenizer.save_pretrained(opt)
    recipe = recipe_factory(model={"ref": str(opt)}, pack={"strategy": "bfd"})
    run = open_run_directory(recipe.resolved_run_dir(), recipe)
    update_stage(run, "load")
    update_stage(run, "template")
    with pytest.raises(IsolationError, match="opt"):
        update_stage(run, "pack")
    assert run.stage_state("pack") != "complete" and not (run.path / "pack").exists()
    none = recipe_factory(model={"ref": str(opt)}, pack={"strategy": "none"})
    update_stage(open_run_directory(none.resolved_run_dir(), none), "pack")  # the suggested way out works
