"""Plain helpers the tests import (`from helpers import ...`). They live outside conftest.py
because two conftest modules (tests/ and tests/faults/) cannot both be imported as `conftest`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

PY = sys.executable

# The state of a run directory as a JSON line, given a recipe file or a run directory (whose
# recipe.yaml is used). A script, so it can run inside a mount namespace the test cannot see into;
# no single quotes, so it fits in a shell's '...'.
STATE = r"""
import json, sys
from pathlib import Path
from sft_pipeline.config import load_recipe
from sft_pipeline.rundir.directory import RunDirectory
from sft_pipeline.stages import open_run_directory
from sft_pipeline.stages import ORDER
path = Path(sys.argv[1])
if path.is_dir():
    run = open_run_directory(path, load_recipe(path / "recipe.yaml"))
else:
    recipe = load_recipe(path)
    run = open_run_directory(recipe.resolved_run_dir(), recipe)
manifest = run.manifest_path
print(json.dumps({
    "states": {s: run.stage_state(s) for s in ORDER},
    "recorded": sorted(json.loads(manifest.read_text())["stages"]) if manifest.exists() else [],
    "folders": sorted(p.name for p in run.path.iterdir() if p.is_dir()) if run.path.is_dir() else [],
    "partial": sorted(p.name for p in (run.path / ".partial").iterdir()) if (run.path / ".partial").is_dir() else [],
}))
"""


def run_state(target: Path) -> dict:
    """STATE of a recipe file or run directory, from this process's view of the filesystem."""
    proc = subprocess.run([PY, "-c", STATE, str(target)], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def userns_works() -> bool:
    """Unprivileged user and mount namespaces (`unshare -rm`): a private tmpfs or bind mount."""
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0


def run_read_only(run_dir: Path, cmd: str, env: dict, timeout: float = 300) -> str:
    """Run the shell command `cmd` with `run_dir` read-only, and say how it was made so: "chmod
    555" (every folder, restored after), or for root, whom permissions do not stop, "read-only
    mount" (a read-only bind mount in a private mount namespace)."""
    if os.geteuid() != 0:
        dirs = [run_dir, *(p for p in run_dir.rglob("*") if p.is_dir())]
        for d in dirs:
            d.chmod(0o555)
        try:
            subprocess.run(["bash", "-c", cmd], check=True, timeout=timeout, env=env)
        finally:
            for d in dirs:
                d.chmod(0o755)
        return "chmod 555"
    script = f"mount --bind {run_dir} {run_dir} && mount -o remount,ro,bind {run_dir} {run_dir} && {cmd}"
    subprocess.run(["unshare", "-rm", "bash", "-c", script], check=True, timeout=timeout, env=env)
    return "read-only mount"


def adapter_changed(run_dir: Path) -> bool:
    """Whether train moved any LoRA B matrix away from what prepare saved (all zeros at init: a
    train that learned nothing, or saved prepare's adapter again, leaves them as they were)."""
    import torch
    from safetensors.torch import load_file

    before = load_file(run_dir / "prepare" / "adapter" / "adapter_model.safetensors")
    after = load_file(run_dir / "train" / "adapter" / "adapter_model.safetensors")
    assert before.keys() == after.keys()
    return any(not torch.equal(before[k], after[k]) for k in before if "lora_B" in k)


def tiny_recipe(root: Path, model_dir: Path, data_dir: Path, **sections):
    """The tests' recipe for the tiny model and data, its run directory root/run, with overrides as a
    nested dict: conftest's recipe_factory, and module fixtures that share one run among tests."""
    from sft_pipeline.config import recipe_from_dict

    tree = {
        "name": "t",
        "run_dir": str(root / "run"),
        "data": {"source": str(data_dir)},
        "model": {"ref": str(model_dir)},
        "pack": {"seq_length": 64},
        "lora": {"r": 4, "lora_alpha": 8},
        "train": {"max_steps": 2, "per_device_train_batch_size": 2, "logging_steps": 1,
                  "eval_strategy": "no", "save_strategy": "no"},
        "tracking": {"wandb": "off", "tensorboard": False},
        "generate": {"max_new_tokens": 8, "batch_size": 4},
    }
    for key, value in sections.items():
        tree.setdefault(key, {}).update(value) if isinstance(value, dict) else tree.__setitem__(key, value)
    return recipe_from_dict(tree)


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def lima_rows(n: int, multi_every: int = 0) -> list[dict]:
    rows = []
    for i in range(n):
        conv = [f"What is {i} plus {i}?", f"TL;DR: It is {2 * i}.\n\nDetails:\n- {i} + {i} = {2 * i}\n- Addition"]
        if multi_every and i % multi_every == 0:
            conv += ["And times two?", f"TL;DR: Also {2 * i}.\n\nDetails:\n- Same thing\n- Doubling"]
        rows.append({"conversations": conv, "source": "math"})
    return rows


# ---- the tiny tokenizer (trained here, ChatML template) that tiny models share ----

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# ChatML with Hermes/Qwen-style tool calls: definitions in a system block, each call as
# <tool_call> JSON in the assistant turn, each result in a tool turn of its own
TOOL_CHATML = (
    r"{%- if tools %}{{ '<|im_start|>system\n# Tools\n<tools>' }}{% for t in tools %}{{ '\n' + (t | tojson) }}"
    r"{% endfor %}{{ '\n</tools><|im_end|>\n' }}{% endif %}"
    r"{%- for m in messages %}"
    r"{%- if m.role == 'tool' %}{{ '<|im_start|>tool\n<tool_response>\n' + m.content + '\n</tool_response><|im_end|>\n' }}"
    r"{%- elif m.role == 'assistant' and m.tool_calls %}{{ '<|im_start|>assistant\n' }}"
    r"{%- if m.content %}{{ m.content + '\n' }}{% endif %}"
    r"{%- for c in m.tool_calls %}{{ '<tool_call>\n{\"name\": \"' + c.function.name + '\", \"arguments\": ' + (c.function.arguments | tojson) + '}\n</tool_call>' }}{% endfor %}"
    r"{{ '<|im_end|>\n' }}"
    r"{%- else %}{{ '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}"
    r"{%- endif %}{%- endfor %}"
    r"{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Llama 2's layout: [INST] question [/INST] answer</s>, a BOS added by the tokenizer itself
LLAMA_CHAT = (
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
    "{% elif m['role'] == 'assistant' %}{{ ' ' + m['content'] + '</s>' }}"
    "{% else %}{{ '<<SYS>>' + m['content'] + '<</SYS>>' }}{% endif %}{% endfor %}"
)

CORPUS = [
    "What is the capital of France? Paris is the capital of France.",
    "TL;DR: Water boils at 100 degrees.\n\nDetails:\n- At sea level\n- Lower in the mountains",
    "Question: how do I sort a list in Python? Answer: use sorted() or list.sort().",
    "The quick brown fox jumps over the lazy dog. 0123456789",
] * 20


def make_tokenizer(folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token="<unk>", bos_token="<|im_start|>")
    fast.chat_template = CHATML
    fast.save_pretrained(folder)
    return fast


def make_llama_tokenizer(folder: Path):
    """A tiny tokenizer with Llama 2's special tokens (<s>, </s>, [INST], [/INST]), its
    SentencePiece-style pre-tokenizer (Metaspace, a space prepended to the text) and a BOS
    added to every encoding, unlike the ChatML one."""
    import string

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    tok.decoder = decoders.Metaspace(prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "[INST]", "[/INST]"],
                                  initial_alphabet=list(string.printable.strip() + "\u2581"))
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>")
    fast.chat_template = LLAMA_CHAT
    fast.save_pretrained(folder)
    return fast


def save_tiny_llama(folder: Path, **shape) -> Path:
    """A 2-layer Llama (hidden 32 unless `shape` says otherwise) with the tiny tokenizer, seeded and
    saved as a local safetensors checkpoint: a valid model.ref."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer(folder)
    torch.manual_seed(0)
    dims = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True)
    config = LlamaConfig(vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, **{**dims, **shape})
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return folder


def save_tiny_llama_smol_vocab(folder: Path) -> Path:
    """A 2-layer Llama (hidden 64) with the bundled SmolLM2 tokenizer and its chat template, seeded
    and saved as a local safetensors checkpoint (about 13 MB: the 49,152-token embedding)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from sft_pipeline.model.loader import resolve

    folder.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(resolve("bundled:smollm2-135m-instruct").path)
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                         pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return folder


def opt_1_3b_config():
    """The seed's OPT-1.3B as a config only (no weights): for counts and memory estimates."""
    from transformers import OPTConfig

    return OPTConfig(hidden_size=2048, num_hidden_layers=24, ffn_dim=8192, num_attention_heads=32,
                     vocab_size=50272, max_position_embeddings=2048, word_embed_proj_dim=2048)


def printed_table(result_output: str) -> dict[str, list[str]]:
    """A rich table the CLI printed, as {first cell: the other cells}."""
    import re

    out = {}
    for line in result_output.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line)[1:-1]]
        if len(cells) > 1 and cells[0]:
            out[cells[0]] = cells[1:]
    return out


def saved_activation_bytes(model, autocast=None) -> int:
    """The bytes autograd saves for backward (parameters left out) in one training forward of the
    labelled-positions loss over two packed rows of 64 tokens, two samples each, with no labels
    (so the logits term, which the memory estimate counts apart, stays out): what the estimate's
    activation term is checked against."""
    from contextlib import nullcontext

    import torch

    from sft_pipeline.training.collate import PackedCollator
    from sft_pipeline.training.loss import labelled_loss

    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(4, 300, (64,), generator=g).tolist(), "labels": [-100] * 64,
             "position_ids": list(range(30)) + list(range(34))} for _ in range(2)]
    batch = PackedCollator(0)(rows)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast or nullcontext():
        labelled_loss(model, batch)
    return sum(saved.values())
