"""Does a GGUF file compute what the merged model computes? Greedy tokens from llama.cpp against
transformers' on the same prompt token ids.

transformers (fp32, merge/model) gives each prompt's greedy answer, up to `tokens` tokens or an
end token, and at each step its top-2 logit margin. Each GGUF file then, through llama-cpp-python:
- answers greedily from the same prompt ids with llama.cpp's own sampler (what a user gets);
- is teacher-forced along transformers' answer: its argmax at every position, so an agreement
  rate means the same thing for every file (a free-running answer that departs once departs for
  good, and the tokens after that compare nothing).
Where F16 and transformers disagree, the position and transformers' margin there are recorded: a
margin within tie_margin is a near-tie (fp16 rounding tipped a coin toss), anything larger a
real disagreement. The prompt ids come from the HF tokenizer; whether llama.cpp's own tokenizer
gives the same ids for the prompt text is recorded beside.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Reference:
    """transformers' greedy answer to one prompt."""

    prompt_ids: list[int]
    tokens: list[int]
    margins: list[float]  # top-1 minus top-2 logit at each answer position


def stop_ids(tokenizer: Any, model: Any) -> list[int]:
    """The end tokens both sides stop at: the tokenizer's EOS and the generation config's."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids |= set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    return sorted(ids)


def reference_answers(model: Any, tokenizer: Any, prompts: list[str], tokens: int, stops: list[int]) -> list[Reference]:
    """Greedy answers from transformers, one prompt at a time (no padding to differ by), with a
    generation config of its own: merge/model's may carry the recipe's sampling settings."""
    import torch
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=tokens, do_sample=False, eos_token_id=stops, output_logits=True,
                              return_dict_in_generate=True,
                              pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0])
    out = []
    for text in prompts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]  # as generate.py tokenizes prompts
        with torch.no_grad():
            result = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                    generation_config=config)
        answer = result.sequences[0, len(ids):].tolist()
        margins = []
        for step in result.logits[: len(answer)]:
            top = torch.topk(step[0].float(), 2).values
            margins.append(float(top[0] - top[1]))
        out.append(Reference(ids, answer, margins))
    return out


def check_file(path: Path, references: list[Reference], texts: list[str], tokens: int, stops: list[int],
               tie_margin: float) -> dict[str, Any]:
    """One GGUF file against transformers: its answers, greedy equality, teacher-forced agreement,
    every disagreement with transformers' margin there, and llama.cpp's tokenizer's agreement."""
    import numpy as np
    import torch
    from llama_cpp import Llama

    n_ctx = max(len(r.prompt_ids) + len(r.tokens) for r in references) + tokens + 8
    # as many threads as torch was given (hardware.configure_threads: one per physical core);
    # llama-cpp-python's default is half the logical CPUs
    llm = Llama(str(path), n_ctx=max(n_ctx, 64), logits_all=True, verbose=False, seed=0,
                n_threads=torch.get_num_threads(), n_threads_batch=torch.get_num_threads())
    try:
        rows, disagreements, agreed, compared = [], [], 0, 0
        stop = set(stops)
        for i, (ref, text) in enumerate(zip(references, texts)):
            own: list[int] = []
            llm.reset()
            for token in llm.generate(ref.prompt_ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
                own.append(int(token))
                if token in stop or len(own) >= tokens:
                    break
            if own == ref.tokens:  # greedy followed transformers all the way: forcing gives the same argmaxes
                forced = list(own)
            else:
                llm.reset()
                llm.eval(ref.prompt_ids + ref.tokens[:-1])
                start = len(ref.prompt_ids) - 1
                logits = np.asarray(llm.scores[start: start + len(ref.tokens)])
                forced = [int(t) for t in logits.argmax(axis=1)]
            for pos, (theirs, ours) in enumerate(zip(ref.tokens, forced)):
                compared += 1
                if theirs == ours:
                    agreed += 1
                    continue
                margin = ref.margins[pos]
                disagreements.append({"prompt": i, "position": pos, "transformers": theirs, "llama_cpp": ours,
                                      "transformers_top2_margin": round(margin, 5), "near_tie": margin <= tie_margin})
            first = next((p for p, (a, b) in enumerate(zip(ref.tokens, own)) if a != b),
                         None if len(own) == len(ref.tokens) else min(len(own), len(ref.tokens)))
            answer = llm.detokenize([t for t in own if t not in stop]).decode("utf-8", errors="replace")
            own_ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            rows.append({"answer": answer, "tokens": own, "greedy_equal": own == ref.tokens, "first_difference": first,
                         "tokenizer_agrees": list(own_ids) == ref.prompt_ids})
        llm_metadata = dict(llm.metadata)
    finally:
        llm.close()
    return {
        "chat_template": llm_metadata.get("tokenizer.chat_template"),
        "prompts": rows,
        "greedy_equal_prompts": sum(r["greedy_equal"] for r in rows),
        "agreement_rate": round(agreed / max(compared, 1), 4),  # teacher-forced, along transformers' answers
        "tokens_compared": compared,
        "disagreements": disagreements,
        "real_disagreements": sum(not d["near_tie"] for d in disagreements),
        "tokenizer_agrees_prompts": sum(r["tokenizer_agrees"] for r in rows),
        "empty_answers": [i for i, r in enumerate(rows) if not r["answer"].strip()],
    }
