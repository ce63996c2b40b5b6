"""Stage 6, merge: base + adapter -> one standalone model, verified against the adapter model.

For a QLoRA run the adapter learned against NF4-dequantized weights, not the originals. Merging
into the originals (what most tools do) silently shifts the model; we offer both bases and
record the chosen one's logit gap to the adapter on the quantized base that training saw.

The dequantized base takes every value from the NF4 model as training loaded it (NF4 codes and
scales dequantized in fp32; embeddings, norms and biases as they were, bf16-rounded in a bf16
run). The reference is that NF4 model with the adapter, computed in fp32: with bf16 compute the
same model's logits move by more than merge.tolerance from rounding alone (up to ~3 on
SmolLM2-135M), so what bf16 training computed is recorded beside the check, not used for it.

Under `method: full` there is nothing to merge: train trained every weight and saved the model.
The stage still runs, so `run`, `status`, `generate --model merged` and evaluate treat every
method alike: merge/model is train/model, made of hard links (no second copy of the weights;
copies where the filesystem cannot link), each file checked identical to train's, and
verify.json says so.

Either way merge/model gets the recipe's `generate:` settings as its generation_config.json
(model/sampling.py), so a runtime that loads the model (transformers, export's copy, serve)
decodes as the recipe says by default. Under method full that file is written new, not through
the hard link: train's own copy stays as train saved it. generate.json records the settings the
file was made from (model/generate.py: a later change of them alone leaves the weights usable).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rich.console import Console

from ..config import Recipe
from ..model.merging import (
    WEIGHT_RTOL,
    MergeError,
    compute_dtype_of,
    dequantized_base,
    expected_merged_weights,
    logits_of,
    max_gap,
    probe_batch,
    upcast_to_fp32,
    weight_check,
)
from ..model.sampling import GENERATION_CONFIG, GENERATION_KEYS, RECORD, write_generation_config
from ..rundir.directory import RunDirectory
from ..rundir.files import link_tree, write_json
from ..rundir.stage_spec import SUMMARY, StageSpec

SPEC = StageSpec(
    # method: full has nothing to merge; train.precision: the NF4 reference model's compute dtype (QLoRA);
    # generate.*: model/generation_config.json (batch_size is how many prompts one call takes: not in it)
    name="merge", reads=("method", "merge", "model", "train.precision", *GENERATION_KEYS),
    upstream=("template", "train"),  # template: the probe texts (prepare comes in through train)
    writes=("model/", "verify.json", SUMMARY, RECORD),
)

console = Console(stderr=True)


def produce(run_dir: RunDirectory, out: Path) -> None:
    import torch
    from peft import PeftModel

    from ..model.loader import load_model, load_tokenizer

    recipe, cfg = run_dir.recipe, run_dir.recipe.merge
    if recipe.method == "full":
        export_trained_model(run_dir.artifact("train", "model"), out, recipe)
        return
    adapter = run_dir.artifact("train", "adapter")
    dtype = getattr(torch, cfg.dtype)
    tokenizer = load_tokenizer(recipe.model.ref, recipe.model.trust_remote_code)
    texts = probe_texts(run_dir)
    batch = probe_batch(tokenizer, texts)
    mask = batch["attention_mask"].float()

    quantized = recipe.model.quantization == "nf4"
    if quantized:  # the reference is the adapter on exactly the base training saw: the NF4 one
        ref_logits, native_logits, compared, base = nf4_reference(recipe, adapter, batch, mask, dtype)
    else:
        native_logits, compared, base = None, {}, load_model(
            recipe.model.ref, dtype=dtype, trust_remote_code=recipe.model.trust_remote_code,
            allow_pickle=recipe.model.allow_pickle)
    peft_model = PeftModel.from_pretrained(base, str(adapter))
    peft_model.eval()
    if not quantized:  # same full-precision base: the unmerged adapter model is the reference
        ref_logits = logits_of(peft_model, batch)
    merged, weight_gap = merge_checked(peft_model)
    merged_logits = logits_of(merged, batch)
    gap = max_gap(merged_logits, ref_logits, mask)
    if native_logits is not None:
        compared["training_compute_gap"] = max_gap(merged_logits, native_logits, mask)

    passed = gap <= cfg.tolerance
    record = {
        "base": cfg.base if quantized else "original", "quantized_training": quantized,
        "max_abs_logit_gap": gap, "tolerance": cfg.tolerance, "passed": passed,
        "reference": ("adapter on the NF4 base training saw (its 4-bit codes, scales and other weights), "
                      "computed in float32" if quantized else "adapter on the same full-precision base"),
        **compared,
        "probe_texts": len(texts),
        "max_relative_weight_gap": weight_gap,  # merged vs W0 + (alpha/r)*B*A, every LoRA layer
    }
    if not passed and not (quantized and cfg.base == "original"):
        raise MergeError(f"merge: merged logits differ from the adapter's by {gap:.3g} > merge.tolerance {cfg.tolerance}")
    if not passed:
        console.print(f"[yellow]merge.base original: logit gap {gap:.3g} to the quantized-base adapter "
                      f"(> {cfg.tolerance}); merge.base: dequantized matches what training saw")
    merged.save_pretrained(str(out / "model"), safe_serialization=True)
    tokenizer.save_pretrained(str(out / "model"))
    write_generation_config(recipe.generate, tokenizer, merged.generation_config, out)
    console.print(f"merged model saved to {out / 'model'}; max |logit gap| vs adapter = {gap:.3g}")
    write_json(out / "verify.json", record)
    write_json(out / SUMMARY, {k: record[k] for k in ("base", "max_abs_logit_gap", "passed")})


def export_trained_model(trained: Path, out: Path, recipe: Recipe) -> None:
    """method full: the trained model is the export. Linked (or copied) into model/, every file
    but generation_config.json (the recipe's, written new) checked identical to train's;
    verify.json records that nothing was merged, and why."""
    import filecmp

    from transformers import GenerationConfig

    from ..model.loader import load_tokenizer

    how = link_tree(trained, out / "model")
    own = GenerationConfig.from_pretrained(trained) if (trained / GENERATION_CONFIG).is_file() else None
    tokenizer = load_tokenizer(recipe.model.ref, recipe.model.trust_remote_code)
    write_generation_config(recipe.generate, tokenizer, own, out)
    files = [p.relative_to(trained) for p in trained.rglob("*") if p.is_file() and p.name != GENERATION_CONFIG]
    differ = [str(f) for f in files if not (os.path.samefile(trained / f, out / "model" / f)
                                             or filecmp.cmp(trained / f, out / "model" / f, shallow=False))]
    if differ:
        raise MergeError(f"merge: the exported {differ[0]} differs from train's")
    record = {
        "method": "full", "merged": False, "passed": True,
        "why": "method full trained every weight; the trained model is the export, there is no adapter to merge",
        "export": f"train/model, {how}", "files": len(files), "identical_to_train": True,
        "generation_config": "the recipe's generate settings, a new file (train's own left as it was)",
    }
    console.print(f"method full: nothing to merge; merge/model is the trained model ({how})")
    write_json(out / "verify.json", record)
    write_json(out / SUMMARY, {"export": f"the trained model ({how})", "passed": True})


def probe_texts(run_dir: RunDirectory) -> list[str]:
    """What the merged and adapter models are compared on: rendered samples when template's output
    is there (the eval split first), two fixed questions otherwise."""
    import datasets

    if run_dir.stage_state("template") != "complete":
        return ["What is the capital of France?", "Explain gradient descent in one paragraph."]
    split = "eval" if run_dir.artifact("template", "eval").is_dir() else "train"
    return datasets.load_from_disk(str(run_dir.artifact("template", split)))["text"][:4]


def nf4_reference(recipe: Recipe, adapter: Path, batch: dict[str, Any], mask: Any,
                  dtype: Any) -> tuple[Any, Any, dict[str, Any], Any]:
    """(reference logits in fp32, training-compute logits or None, what was compared, merge base).

    With bf16 compute the same model's logits move by more than merge.tolerance from rounding
    alone, so what training computed is kept for the record and the check compares the merged
    model with the same NF4 model computed in float32."""
    import torch

    from ..model.build import build_model
    from ..model.hardware import detect

    reference = build_model(recipe, detect(), checkpointing=False, adapter=adapter, trainable=False)
    reference.eval()
    compute = compute_dtype_of(reference)
    native = None
    if compute != torch.float32:
        with torch.autocast(device_type=next(reference.parameters()).device.type, dtype=compute):
            native = logits_of(reference, batch)
        upcast_to_fp32(reference)
    ref_logits = logits_of(reference, batch)
    compared: dict[str, Any] = {}
    if native is not None:
        compared["training_compute_rounding_gap"] = max_gap(ref_logits, native, mask)
    compared.update(training_compute_dtype=str(compute).replace("torch.", ""), reference_compute_dtype="float32")
    base = dequantized_base(recipe, dtype, source=reference) if recipe.merge.base == "dequantized" else None
    if base is None:
        from ..model.loader import load_model

        base = load_model(recipe.model.ref, dtype=dtype, trust_remote_code=recipe.model.trust_remote_code,
                          allow_pickle=recipe.model.allow_pickle)
    return ref_logits, native, compared, base


def merge_checked(peft_model: Any) -> tuple[Any, float]:
    """merge_and_unload, with every merged weight checked against W0 + scale * B @ A computed here."""
    expected = expected_merged_weights(peft_model)
    merged = peft_model.merge_and_unload()
    merged.eval()
    weight_gap = weight_check(merged, expected)
    if weight_gap > WEIGHT_RTOL:
        raise MergeError(f"merge: a merged weight differs from W0 + (alpha/r)*B*A by {weight_gap:.3g} (relative)")
    return merged, weight_gap
