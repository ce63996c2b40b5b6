"""The recipe schema: one small pydantic model per recipe section, unknown keys refused.

A recipe is validated completely before any stage does work, so a typo costs a second, not a
model load. Section fields reuse the names of the library they feed (``lora`` -> peft.LoraConfig,
``train`` -> trl.SFTConfig) so those libraries' docs are ours.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator

from .errors import PipelineError


class RecipeError(PipelineError, ValueError):
    """A recipe that cannot be used; the message is one line naming the key and the file."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


FORMAT = Literal["auto", "lima", "deeplake_lima", "alpaca", "messages", "sharegpt", "prompt_completion"]


class SourceSpec(Section):
    """One source of a mixture (data.sources): read, normalized and counted on its own."""

    source: str  # as data.source: bundled:<name>, an HF hub id, a local file/glob/folder, Deep Lake
    format: FORMAT = "auto"
    columns: dict[str, str] = Field(default_factory=dict)
    split: str | None = None  # its training split; None: data.train_split
    # weight: interleaved, drawn in proportion to the weights (every source then has one);
    # fraction: that share of its records, a seeded choice, concatenated (none given: all of them)
    weight: float | None = Field(default=None, gt=0)
    fraction: float | None = Field(default=None, gt=0, le=1)
    name: str | None = None  # its key in load/stats.json; default: the source


class DataConfig(Section):
    # "bundled:<name>", an HF hub id, a local file/glob/folder, or a Deep Lake path (hub://, al://)
    source: str = "bundled:lima_house_style"
    # Record shape; "auto" detects it from the columns of the first record.
    format: FORMAT = "auto"
    # Map the names a shape expects to this source's column names, e.g. {question: prompt, answer: response}
    columns: dict[str, str] = Field(default_factory=dict)
    train_split: str = "train"
    # A separate source for evaluation (the seed keeps LIMA's test set in its own Deep Lake path).
    eval_source: str | None = None
    eval_split: str | None = "test"
    max_records: int | None = Field(default=None, ge=1)  # cap per split, for quick trials
    # Where the source has no `eval_split` (a single file, a Deep Lake dataset): carve one from
    # train, a count (>= 1) or a fraction (< 1). A source that has the split uses it.
    eval_size: float | None = Field(default=None, gt=0)
    split_seed: int = 42
    # CSV/TSV field separator; auto: Excel's `sep=` line, tab for .tsv, else the one of , ; tab |
    # that splits the header into the most fields. "tab" or "\t" (quoted in YAML) for a tab.
    csv_delimiter: Literal["auto", ",", ";", "\t", "|"] = "auto"
    # Several sources mixed into one training set (data/mixture.py), instead of data.source; each
    # counted on its own in load/stats.json. The mixture is seeded with split_seed.
    sources: list[SourceSpec] | None = None
    # weighted sources (interleave): stop at the first source that runs out (the others' rest is
    # counted not_drawn), or go on until every source is drawn whole (ones that ran out repeat)
    stopping_strategy: Literal["first_exhausted", "all_exhausted"] = "first_exhausted"

    @field_validator("csv_delimiter", mode="before")
    @classmethod
    def _tab(cls, v: Any) -> Any:
        return "\t" if v in ("tab", "\\t") else v  # '\t' in single quotes is backslash + t

    @field_validator("sources")
    @classmethod
    def _one_way_to_mix(cls, v: list[SourceSpec] | None) -> list[SourceSpec] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("empty; list at least one source, or use data.source")
        weighted = [s.weight is not None for s in v]
        if any(weighted) and not all(weighted):
            raise ValueError(f"source {weighted.index(False)} has no weight where another has one: weight every "
                             "source (interleaved) or none")
        if any(weighted) and any(s.fraction is not None for s in v):
            raise ValueError("weight (interleave) and fraction (concatenate) cannot be mixed; use one")
        names = [s.name or s.source for s in v]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"{twice[0]!r} named twice; give each source a distinct name")
        return v

    @model_validator(mode="after")
    def _one_way_to_name_the_data(self) -> "DataConfig":
        if self.sources is not None and "source" in self.model_fields_set:
            raise ValueError("data.source and data.sources: give one (data.sources lists every source of a mixture)")
        return self

    def source_names(self) -> list[str]:
        """Each source's key in load's stats: its name, else the source itself."""
        return [s.name or s.source for s in self.sources or []]

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        """A recipe without sources dumps as it always did (so its load fingerprint is what it
        was); one with sources leaves out the default data.source, which it does not read and
        which would read back as given alongside data.sources."""
        out = handler(self)
        if self.sources is None:
            out.pop("sources", None)
            out.pop("stopping_strategy", None)
        elif "source" not in self.model_fields_set:
            out.pop("source", None)
        return out


class TemplateConfig(Section):
    # seed: the template of the articles this project started from ("the seed", docs/glossary.md),
    # each turn as "Question: ..." or "Answer: ...", joined by a blank line; chat: the tokenizer's
    # chat template; custom: the user/assistant formats below.
    kind: Literal["seed", "chat", "custom"] = "chat"
    system: str | None = None  # chat only: None keeps the tokenizer's default system prompt
    user: str = "Question: {content}"
    assistant: str = "Answer: {content}"
    separator: str = "\n\n"
    # A special token's text inside a record's content (an answer containing "<|im_end|>"):
    # text tokenizes it as those characters (the template's own markup keeps its control tokens);
    # drop drops the record (reason control_text); keep makes it the real control tokens, on purpose.
    control_text: Literal["text", "drop", "keep"] = "text"
    # An assistant turn's reasoning (reasoning_content / thinking): keep renders it where the chat
    # template has a place for it and drops the record (reasoning_unsupported) where it has none;
    # drop removes it (counted); inline writes "<think>\n...\n</think>\n\n" before the answer, trained.
    reasoning: Literal["keep", "drop", "inline"] = "keep"

    @field_validator("user", "assistant")
    @classmethod
    def _has_content(cls, v: str) -> str:
        if v.count("{content}") != 1:
            raise ValueError("must contain '{content}' exactly once")
        return v

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        """reasoning at its default is left out of the dump: the template fingerprint of a run
        made before the key existed stays what it was (keep is what those runs did: they had no
        reasoning to place), so its template, pack and train are not redone for nothing."""
        out = handler(self)
        if self.reasoning == "keep":
            out.pop("reasoning", None)
        return out


class PackConfig(Section):
    seq_length: int = Field(default=512, ge=8)
    # wrapped: the seed's ConstantLengthDataset; bfd: best-fit decreasing with per-sample
    # position_ids (no cross-sample attention); none: one padded sample per row.
    strategy: Literal["wrapped", "bfd", "none"] = "bfd"
    loss_on: Literal["all", "assistant"] = "assistant"
    # samples longer than seq_length (bfd/none): keep the first seq_length tokens, drop the sample,
    # or split it at assistant-turn ends into pieces that fit (a single turn too long is truncated)
    overlong: Literal["truncate", "drop", "split"] = "truncate"


class ModelConfig(Section):
    # bundled:smollm2-135m-instruct, an HF hub id, a local checkpoint folder, or a .gguf file
    ref: str = "bundled:smollm2-135m-instruct"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto follows hardware.py
    quantization: Literal["none", "nf4"] = "none"
    # auto: on only when the memory estimate says the activations would not fit comfortably
    gradient_checkpointing: Literal["auto", "on", "off"] = "auto"
    trust_remote_code: bool = False
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] | None = None
    allow_pickle: bool = False  # allow .bin (pickle) weights; safetensors only by default

    @field_validator("gradient_checkpointing", mode="before")
    @classmethod
    def _yaml_on_off(cls, v: Any) -> Any:
        return {False: "off", True: "on"}.get(v, v) if isinstance(v, bool) else v


class LoraSection(Section):
    r: int = Field(default=16, ge=1)
    lora_alpha: float = Field(default=32, gt=0)
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    bias: Literal["none", "all", "lora_only"] = "none"
    target_modules: str | list[str] = "all-linear"
    use_rslora: bool = False


# transformers.SchedulerType's values (a test keeps this list in step with the installed version);
# spelled out here so a typo is refused when the recipe loads, not after the model has loaded.
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
                 "warmup_stable_decay", "greedy")


class TrainConfig(Section):
    num_train_epochs: float = Field(default=3, gt=0)
    max_steps: int = Field(default=-1, ge=-1)  # -1: num_train_epochs decides
    per_device_train_batch_size: int = Field(default=8, ge=1)
    per_device_eval_batch_size: int = Field(default=8, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    learning_rate: float = Field(default=2e-4, gt=0)
    lr_scheduler_type: str = "cosine"
    warmup_steps: int = Field(default=0, ge=0)
    weight_decay: float = Field(default=0.0, ge=0)
    eval_strategy: Literal["no", "steps", "epoch"] = "epoch"
    save_strategy: Literal["no", "steps", "epoch"] = "epoch"
    eval_steps: int | None = Field(default=None, ge=1)
    save_steps: int | None = Field(default=None, ge=1)
    save_total_limit: int | None = Field(default=2, ge=1)  # None keeps every checkpoint
    logging_steps: int = Field(default=10, ge=1)
    seed: int = 42
    # auto: bf16 where the hardware runs it fast (GPU with bf16, CPU with AMX/AVX512-BF16), else fp32
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    dataloader_num_workers: int = Field(default=0, ge=0)
    # CPU only: LoRA dropout masks from numpy's SFC64 generator, seeded from torch's (dropout.py);
    # torch's bernoulli_ is single-threaded and ~15% of a LoRA step on a 2-core CPU. Same p, other draws.
    fast_dropout: bool = True
    # Any other trl.SFTConfig argument, checked against SFTConfig's fields when the stage runs.
    extra_args: dict[str, Any] = Field(default_factory=dict)

    @field_validator("eval_strategy", "save_strategy", mode="before")
    @classmethod
    def _yaml_no(cls, v: Any) -> Any:
        return "no" if v is False else v  # YAML 1.1 reads a bare `no` as False

    @field_validator("lr_scheduler_type")
    @classmethod
    def _known_scheduler(cls, v: str) -> str:
        if v not in LR_SCHEDULERS:
            raise ValueError(f"unknown scheduler {v!r}; expected one of {', '.join(LR_SCHEDULERS)}")
        return v


class TrackingConfig(Section):
    # auto: online when WANDB_API_KEY is set, offline otherwise (sync later with `wandb sync`)
    wandb: Literal["off", "offline", "online", "auto"] = "off"
    project: str = "sft-pipeline"
    group: str | None = None  # W&B run group (WANDB_RUN_GROUP): a sweep sets its name here
    tensorboard: bool = True
    # the trained adapter as a W&B model artifact (a copy of it staged in W&B's data folder)
    log_adapter: bool = False

    @field_validator("wandb", mode="before")
    @classmethod
    def _yaml_off(cls, v: Any) -> Any:
        # YAML 1.1 reads a bare `off` as False and `on` as True
        return {False: "off", True: "auto"}.get(v, v) if isinstance(v, bool) else v


STRATEGIES = ("ddp", "fsdp2", "zero2", "zero3", "zero3_offload")


class DistributedConfig(Section):
    """Training in several processes, launched by an engine (torchrun or accelerate), never by
    this package. One process per node and one node (the defaults) is the single-process train.
    Where a node's rank and the rendezvous endpoint are left unset they come from the launch
    environment: torchrun's NODE_RANK/MASTER_ADDR/MASTER_PORT, or SLURM's (training/launch.py)."""

    nproc_per_node: int = Field(default=1, ge=1)  # one per GPU, or per CPU socket
    nnodes: int = Field(default=1, ge=1)
    node_rank: int | None = Field(default=None, ge=0)
    rdzv_endpoint: str | None = None  # host:port of node 0's c10d rendezvous (several nodes)
    rdzv_id: str | None = None  # the job's name at the rendezvous: SLURM_JOB_ID, else the run's name
    launcher: Literal["torchrun", "accelerate"] = "torchrun"
    # ddp | fsdp2 | zero2 | zero3 | zero3_offload, or the path of an accelerate config (.yaml) or
    # a DeepSpeed config (.json) of the user's own
    strategy: str = "ddp"
    threads_per_process: int | None = Field(default=None, ge=1)  # None: physical cores / nproc_per_node
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl on GPUs, gloo on CPUs
    # torchrun's --numa-binding (GPU hosts): each process on the CPUs of its GPU's NUMA node or socket
    numa_binding: Literal["node", "socket", "exclusive", "core-complex"] | None = None

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, v: str) -> str:
        if v in STRATEGIES or v.endswith((".yaml", ".yml", ".json")):
            return v
        raise ValueError(f"{v!r}: expected one of {', '.join(STRATEGIES)}, or the path of an accelerate config "
                         "(.yaml) or DeepSpeed config (.json)")

    @field_validator("rdzv_endpoint")
    @classmethod
    def _host_port(cls, v: str | None) -> str | None:
        if v is None:
            return v
        host, _, port = v.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{v!r}: expected host:port (node 0's address and a free port, e.g. 10.0.0.2:29500)")
        return v

    @model_validator(mode="after")
    def _rank_in_range(self) -> "DistributedConfig":
        if self.node_rank is not None and self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank {self.node_rank} with nnodes {self.nnodes}: ranks are 0..{self.nnodes - 1}")
        return self


class MergeConfig(Section):
    # For QLoRA: merge into the NF4-dequantized weights training saw, or into the original ones.
    base: Literal["dequantized", "original"] = "dequantized"
    tolerance: float = Field(default=1e-3, gt=0)  # max |logit gap| accepted, merged vs adapter
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


class GenerateConfig(Section):
    max_new_tokens: int = Field(default=160, ge=1)
    batch_size: int = Field(default=20, ge=1)
    # Sampling. Off by default: answers are greedy, so evaluate's before/after pairs compare models,
    # not draws (the seed articles sample with repetition_penalty 1.5). temperature 0 means greedy.
    do_sample: bool = False
    temperature: float = Field(default=1.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=50, ge=0)  # 0: no top-k cut
    repetition_penalty: float = Field(default=1.0, gt=0)  # applies to greedy answers too; 1: none
    seed: int = 42  # the sampler's seed: the same seed gives the same text

    @model_validator(mode="after")
    def _sampling_needs_do_sample(self) -> "GenerateConfig":
        """A temperature, top_p or top_k of its own with do_sample false would be silently unused
        (answers stay greedy): refused, naming the key that turns sampling on. Temperature 0
        says greedy itself, so it is accepted either way."""
        if self.do_sample:
            return self
        defaults = type(self).model_fields
        changed = [f"{k} {getattr(self, k)}" for k in ("temperature", "top_p", "top_k")
                   if getattr(self, k) != defaults[k].default and not (k == "temperature" and self.temperature == 0)]
        if changed:
            raise ValueError(f"{changed[0]} with do_sample false: sampling settings apply only when sampling; "
                             "set do_sample: true (or leave them at their defaults for greedy answers)")
        return self


class ServeConfig(Section):
    """`sft-pipeline serve`: llama.cpp's OpenAI-compatible server (llama_cpp.server) on the run's
    export/model-<TYPE>.gguf. Requests that leave a sampling field out get the generate section's
    value (serving/request_defaults.py), so the endpoint answers as `generate` does."""

    # loopback: reachable from this machine only. Any other address (0.0.0.0 in a container) is
    # served with a warning: the endpoint has no API key unless SFT_PIPELINE_SERVE_API_KEY is set.
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)  # 0: a free port the system picks (printed)
    # which export/model-<TYPE>.gguf (F16, Q8_0, Q4_K_M, ...; any case); auto: Q4_K_M, else Q8_0,
    # else F16, else the only other one there. `--gguf PATH` serves a file from anywhere instead.
    quant: str = "auto"
    n_ctx: int = Field(default=2048, ge=16)  # prompt + answer tokens per request
    threads: int | None = Field(default=None, ge=1)  # None: one per physical core (as training)
    # Any other field of llama_cpp.server's ModelSettings (n_gpu_layers, flash_attn, cache,
    # n_batch, ...), checked against them when the server starts.
    model_settings: dict[str, Any] = Field(default_factory=dict)
    verbose: bool = False  # llama.cpp's own load and timing lines on stderr


# The bundled data's house style (sft_pipeline/bundled/lima_house_style), as the demo recipes set it.
HOUSE_STYLE = r"TL;DR: [^\n]+\n\nDetails:\n(- [^\n]+\n){1,4}- [^\n]+"


class HarnessConfig(Section):
    # lm-evaluation-harness tasks run on the model before and after training; [] (the default):
    # none. lima_house_style ships with the package (harness_tasks/) and runs offline; a task of
    # lm-eval's own needs its dataset from the Hub (or the datasets cache).
    tasks: list[str] = Field(default_factory=list)
    limit: int | None = Field(default=None, ge=1)  # documents per task; None: all of them
    num_fewshot: int | None = Field(default=None, ge=0)  # None: each task's own setting
    batch_size: int = Field(default=8, ge=1)
    # the model's chat template around each question, as training rendered conversations
    # (template.kind chat); false for a recipe that trained on plain text
    apply_chat_template: bool = True


class EvaluateConfig(Section):
    # A regex (re.fullmatch) that answers must follow, e.g. HOUSE_STYLE; None: no style is checked
    # (data without a house style has no style row to show)
    style_regex: str | None = None
    max_prompts: int | None = Field(default=None, ge=1)  # None: every eval prompt
    pairs: int = Field(default=3, ge=0)  # before/after answers shown
    # the loss pass over the training blocks too, not only the eval blocks: on the demo it is
    # most of evaluate's time (120 training examples against 40 eval ones)
    train_loss: bool = False
    harness: HarnessConfig = Field(default_factory=HarnessConfig)

    @field_validator("style_regex")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        import re

        if v is not None:
            try:
                re.compile(v)
            except re.error as err:
                raise ValueError(f"not a valid regex: {err}") from None
        return v


class ExportConfig(Section):
    """`sft-pipeline export`: the merged model as GGUF files for llama.cpp and Ollama."""

    # llama.cpp's type names, any case (f16, q8_0, Q4_K_M, ...); validate and preflight check them
    # against the installed llama.cpp. F16 is always made (everything else is quantized from it)
    # and kept only when listed.
    types: list[str] = Field(default_factory=lambda: ["F16", "Q8_0", "Q4_K_M"], min_length=1)
    # Verification: greedy tokens per eval prompt compared with transformers on merge/model (fp32);
    # the eval prompts used (None: all of them, as evaluate's max_prompts)
    verify_tokens: int = Field(default=20, ge=1)
    verify_prompts: int | None = Field(default=None, ge=1)
    # A token where F16 and transformers disagree is a near-tie, recorded and not a failure, when
    # transformers' own top-2 logit gap there is at most this. On the bundled SmolLM2-135M F16
    # flipped 2 of 788 tokens, both where that gap was under 0.005 (docs/export.md); the median gap
    # was 1.3. A real conversion fault (wrong tensor, wrong tokenizer) breaks wide margins too.
    tie_margin: float = Field(default=0.25, ge=0)
    # The file the Ollama Modelfile names in FROM; None: Q4_K_M when exported, else the smallest
    modelfile_type: str | None = None

    @field_validator("types")
    @classmethod
    def _upper_unique(cls, v: list[str]) -> list[str]:
        names = [t.strip().upper() for t in v]  # llama.cpp spells every type in capitals
        twice = sorted({t for t in names if names.count(t) > 1})
        if twice:
            raise ValueError(f"{', '.join(twice)} listed twice")
        return names

    @field_validator("modelfile_type")
    @classmethod
    def _upper(cls, v: str | None) -> str | None:
        return None if v is None else v.strip().upper()

    @model_validator(mode="after")
    def _modelfile_type_exported(self) -> "ExportConfig":
        if self.modelfile_type is not None and self.modelfile_type not in self.types:
            raise ValueError(f"modelfile_type {self.modelfile_type} is not in export.types ({', '.join(self.types)})")
        return self


METHODS = ("lora", "qlora", "full")


class Recipe(Section):
    name: str = "run"
    run_dir: str | None = None  # default: runs/<name>
    # lora: LoRA on the base as loaded; qlora: LoRA on the base in NF4 (model.quantization: nf4, set
    # by this); full: every weight trained, fp32 master weights (no LoRA, the lora section unused).
    # Unset: qlora when model.quantization is nf4, else lora (recipes written before this key).
    method: Literal["lora", "qlora", "full"] = "lora"
    data: DataConfig = Field(default_factory=DataConfig)
    template: TemplateConfig = Field(default_factory=TemplateConfig)
    pack: PackConfig = Field(default_factory=PackConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    lora: LoraSection = Field(default_factory=LoraSection)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    merge: MergeConfig = Field(default_factory=MergeConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)

    @model_validator(mode="before")
    @classmethod
    def _one_way_to_say_qlora(cls, data: Any) -> Any:
        """method and model.quantization say one thing: qlora is LoRA on an NF4 base, so either key
        alone gives both, and a contradiction is refused naming both keys."""
        if not isinstance(data, dict) or data.get("method", "lora") not in (*METHODS, None):
            return data  # not a mapping, or a bad method: the field validators say so
        model = data.get("model")
        if model is not None and not isinstance(model, dict):
            return data
        method, quant = data.get("method"), (model or {}).get("quantization")
        implied = method_for(quant)
        if method is None:
            return {**data, "method": implied} if implied else data
        problem = method_conflict(method, quant)
        if problem:
            raise ValueError(problem)
        if method == "qlora" and quant is None:
            return {**data, "model": {**(model or {}), "quantization": "nf4"}}
        return data

    @model_validator(mode="after")
    def _full_trains_fp32_weights(self) -> "Recipe":
        if self.method != "full":
            return self
        if self.model.dtype not in ("auto", "float32"):
            raise ValueError(f"model.dtype: {self.model.dtype} with method: full: full fine-tuning keeps fp32 master "
                             "weights (bf16 only under autocast, where train.precision picks it); use auto or float32")
        if self.merge.dtype != "float32":
            raise ValueError(f"merge.dtype: {self.merge.dtype} with method: full: there is no merge, the export is "
                             "the trained fp32 model as train saved it; use float32")
        return self

    @model_validator(mode="after")
    def _eval_needs_split(self) -> "Recipe":
        if self.train.eval_strategy != "no" and self.data.eval_split is None and self.data.eval_size is None \
                and self.data.eval_source is None:
            raise ValueError("train.eval_strategy needs an eval set: data.eval_split, eval_size or eval_source "
                             "(or set eval_strategy: no)")
        return self

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.name


def method_for(quantization: Any) -> str | None:
    """The method a model.quantization value implies when method is not given (None: not a known value)."""
    return {"nf4": "qlora", "none": "lora", None: "lora"}.get(quantization) if isinstance(quantization, (str, type(None))) else None


def method_conflict(method: str, quantization: Any) -> str | None:
    """Why method and model.quantization contradict each other, in one line naming both; None if they agree."""
    if quantization == "nf4" and method == "full":
        return ("method: full with model.quantization: nf4: full fine-tuning trains every weight in fp32, "
                "an NF4 base is frozen in 4 bits; use method: qlora, or model.quantization: none")
    if quantization == "nf4" and method == "lora":
        return ("method: lora with model.quantization: nf4: LoRA on an NF4 base is method: qlora; "
                "for LoRA on the full-precision base set model.quantization: none")
    if quantization == "none" and method == "qlora":
        return ("method: qlora with model.quantization: none: QLoRA is LoRA on an NF4 base; "
                "drop model.quantization (qlora sets nf4) or use method: lora")
    return None


def _set_dotted(tree: dict[str, Any], dotted: str, raw: str) -> None:
    """Apply one `--set a.b=value`; the value is parsed as YAML so numbers and lists work."""
    set_key(tree, dotted, yaml.safe_load(raw), f"--set {dotted}")


def set_key(tree: dict[str, Any], dotted: str, value: Any, origin: str) -> None:
    """Set the dotted key `a.b.c` in a recipe tree (sections made as needed); `origin` leads the
    one-line error when a part of the path holds a value, not a section."""
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise RecipeError(f"{origin}: '{key}' is not a section")
    node[keys[-1]] = value


def parse_overrides(overrides: list[str] | None) -> list[tuple[str, str]]:
    pairs = []
    for item in overrides or []:
        if "=" not in item:
            raise RecipeError(f"--set {item!r}: expected KEY=VALUE, e.g. train.max_steps=5")
        key, value = item.split("=", 1)
        pairs.append((key.strip(), value))
    return pairs


def _format_error(err: ValidationError, origin: str) -> str:
    first = err.errors()[0]
    # pydantic adds the union branch tried ("str", "list[str]") to the location: not a key
    key = ".".join(str(p) for p in first["loc"] if not _is_type_name(str(p)))
    msg = first["msg"]
    if first["type"] == "value_error":  # our own validators' messages, without pydantic's prefix
        msg = msg.removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif "input" in first and not isinstance(first["input"], dict):
        msg = f"{msg} (got {first['input']!r})"
    extra = f" ({len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{origin}: {key}: {msg}{extra}" if key else f"{origin}: {msg}{extra}"


def _is_type_name(part: str) -> bool:
    return part in {"str", "int", "float", "bool", "dict", "list", "none"} or "[" in part or part.startswith(("function-", "literal"))


def recipe_from_dict(tree: dict[str, Any], origin: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(tree)
    except ValidationError as err:
        raise RecipeError(_format_error(err, origin)) from None


def read_yaml(path: Path, what: str) -> Any:
    """The parsed file (None when empty); a missing file or broken YAML is a one-line RecipeError
    naming the file (and the line YAML stopped at), `what` saying which file the command wanted:
    a recipe, a sweep file and a sweep's base recipe are refused alike."""
    if not path.is_file():
        raise RecipeError(f"{path}: {what} file not found")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise RecipeError(f"{path}{where}: not valid YAML: {getattr(err, 'problem', err)}") from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    path = Path(path)
    tree = read_yaml(path, "recipe") or {}
    if not isinstance(tree, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections, got {type(tree).__name__}")
    tree.setdefault("name", path.stem)
    for key, value in parse_overrides(overrides):
        _set_dotted(tree, key, value)
    return recipe_from_dict(tree, str(path))


def recipe_to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(json.loads(recipe.model_dump_json()), sort_keys=False)
