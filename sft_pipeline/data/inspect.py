"""`inspect`: what the data stages made of the source, before any training is paid for.

Counts kept and dropped by reason (with where the first drops are) in load and in template
(tool calls or reasoning the template cannot render, control text), each source of a mixture
on its own row with what the mixing drew from it, the content parts the kept records lost,
untrained turns and where reasoning went, how many records held control text and how it was
tokenized, a histogram of sample lengths in tokens against seq_length, and a few
rendered samples with the trained tokens marked.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..rundir.directory import RunDirectory
from ..rundir.files import read_json
from ..rundir.stage_spec import STATS
from .tokens import IGNORE


def histogram(lengths: list[int], seq_length: int, bins: int = 8) -> list[tuple[str, int]]:
    """Equal-width bins up to seq_length, plus one for samples longer than it."""
    edges = np.linspace(0, seq_length, bins + 1).astype(int)
    counts, _ = np.histogram([min(n, seq_length) for n in lengths if n <= seq_length], bins=edges)
    rows = [(f"{edges[i] + 1}-{edges[i + 1]}", int(c)) for i, c in enumerate(counts)]
    rows.append((f"> {seq_length}", sum(1 for n in lengths if n > seq_length)))
    return rows


def marked(ids: list[int], labels: list[int], tokenizer: Any) -> Text:
    """Decoded tokens; the ones that carry a label (the loss) in green."""
    text = Text()
    for tok, lab in zip(ids, labels):
        piece = tokenizer.decode([tok])
        text.append(piece, style="bold green" if lab != IGNORE else "dim")
    return text


def _drops(st: dict[str, Any]) -> str:
    """Each reason with its first locations (a mixture's not_drawn / not_taken have none: they
    are records the mixing left, not records that could not be used)."""
    def where(why: str) -> str:
        found = st.get("dropped_examples", {}).get(why, [])
        return f" ({', '.join(found)})" if found else ""

    return "; ".join(f"{why}: {n}{where(why)}" for why, n in st.get("dropped", {}).items()) or "none"


def _notes(st: dict[str, Any]) -> str:
    """What the kept records lost or carry (content parts dropped, untrained and reasoning turns)."""
    said = [f"parts dropped: {', '.join(f'{k} {n}' for k, n in st['parts_dropped'].items())}"] if st.get("parts_dropped") else []
    said += [f"{k.replace('_', ' ')}: {st[k]}" for k in ("untrained_turns", "reasoning_turns") if st.get(k)]
    return f"; kept records' {'; '.join(said)}" if said else ""


def _mixed(own: dict[str, Any]) -> str:
    extra = [f"{k.replace('_', ' ')} {own[k]}" for k in ("not_drawn", "not_taken", "repeated") if own.get(k)]
    return ", ".join([f"{own['in_mixture']} in the mixture", *extra])


def _mixing(how: dict[str, Any]) -> str:
    if how["how"] == "interleave":
        return (f"interleaved (datasets.interleave_datasets, probabilities {how['probabilities']}, "
                f"{how['stopping_strategy']}, seed {how['seed']})")
    return f"concatenated (datasets.concatenate_datasets, fractions {how['fractions']}, seed {how['seed']})"


def _turns(st: dict[str, Any]) -> str:
    """Template's untrained turns and where reasoning went, for the splits that have any."""
    said = []
    if st.get("turn_weights"):
        said.append(f"untrained turns {st['turn_weights']['untrained_turns']} in {st['turn_weights']['records']} records")
    if st.get("reasoning"):
        r = st["reasoning"]
        said.append(f"reasoning ({r['mode']}): " + ", ".join(f"{k.replace('_', ' ')} {n}" for k, n in r["turns"].items()))
    return "; ".join(said) or "none"


def _control(c: dict[str, Any]) -> str:
    if not c.get("records"):
        return "none"
    return f"records {c['records']}, fields {c['fields']}, tokenized as text {c['tokenized_as_text']}"


def template_table(stats: dict[str, Any], console: Console) -> None:
    """What template made of load's rows: kept, dropped by reason (with the first load rows),
    and the records whose content held the tokenizer's control text."""
    said = {True: "yes", False: "no"}
    table = Table(title=f"template ({stats['kind']}; renders tool calls: {said[stats.get('tool_calls', False)]}, "
                        f"tool definitions: {said[stats.get('tool_definitions', False)]})")
    splits = {k: v for k, v in stats.items() if isinstance(v, dict)}
    turns = any(st.get("turn_weights") or st.get("reasoning") for st in splits.values())
    for col in ("split", "read", "kept", "dropped by reason (first rows)", "control text", *(["turns"] if turns else [])):
        table.add_column(col)
    for split, st in splits.items():
        mode = st.get("control_text", {}).get("mode", "text")
        table.add_row(split, str(st["read"]), str(st["kept"]), _drops(st),
                      f"{_control(st.get('control_text', {}))} (control_text: {mode})", *([_turns(st)] if turns else []))
    console.print(table)


def show(run_dir: RunDirectory, console: Console, samples: int = 2) -> None:
    from ..model.loader import load_tokenizer
    from .prompts import needs_eos
    from .tokens import OUTCOMES, fit, tokenize_split

    recipe = run_dir.recipe
    load_stats = read_json(run_dir.artifact("load", STATS))
    table = Table(title="records")
    for col in ("split", "source", "format", "read", "kept", "dropped by reason (first locations)"):
        table.add_column(col)
    for split, st in load_stats.items():
        table.add_row(split, str(st.get("source", st.get("carved_from", ""))), str(st.get("format", "")),
                      str(st.get("read")), str(st.get("kept")), _drops(st) + _notes(st))
        for name, own in st.get("sources", {}).items():  # a mixture: each source's own counts
            table.add_row(f"  {split}", name, str(own.get("format", "")), str(own["read"]),
                          f"{own['kept']} ({_mixed(own)})", _drops(own) + _notes(own))
    console.print(table)
    for split, st in load_stats.items():
        if "mixing" in st:
            console.print(f"{split}: {_mixing(st['mixing'])}" + (f", {st['repeated']} drawn again" if st.get("repeated") else ""))
    template_table(read_json(run_dir.artifact("template", STATS)), console)

    tokenizer = load_tokenizer(recipe.model.ref, recipe.model.trust_remote_code)
    tokens = tokenize_split(run_dir.artifact("template", "train"), tokenizer, recipe.pack.loss_on, needs_eos(recipe.template))
    lengths = tokens.lengths.tolist()
    hist = Table(title=f"train sample lengths in tokens (seq_length {recipe.pack.seq_length})")
    hist.add_column("tokens")
    hist.add_column("samples", justify="right")
    hist.add_column("")
    top = max(1, max(c for _, c in histogram(lengths, recipe.pack.seq_length)))
    for label, count in histogram(lengths, recipe.pack.seq_length):
        hist.add_row(label, str(count), "#" * round(30 * count / top))
    console.print(hist)
    cfg = recipe.pack
    if cfg.strategy == "wrapped":
        console.print(f"pack (wrapped): no sample is cut or dropped; samples run on across blocks of {cfg.seq_length}")
    else:  # what pack will do with the samples that do not fit, before it runs
        _, outcome = fit(tokens, cfg.seq_length, cfg.overlong)
        console.print(f"pack ({cfg.strategy}, overlong: {cfg.overlong}) of {len(tokens)} train samples: " + ", ".join(
            f"{k} {outcome[k]}" for k in OUTCOMES) + f"; tokens cut {outcome['tokens_truncated']}, "
            f"in dropped samples {outcome['tokens_dropped']}")
    if run_dir.stage_state("pack") == "complete":
        pack_stats = read_json(run_dir.artifact("pack", STATS))
        console.print(f"pack ({pack_stats['strategy']}) made: " + "; ".join(
            f"{k}: {v['blocks']} blocks, {v['trained_tokens']}/{v['tokens']} tokens trained, "
            f"padding {v['padding_share']:.1%}, control text {_control(v.get('control_text', {}))}"
            for k, v in pack_stats.items() if isinstance(v, dict)))
    for i in range(min(samples, len(tokens))):
        ids, labels = tokens.sample(i)
        console.rule(f"train sample {i} ({len(ids)} tokens, {int((labels != IGNORE).sum())} trained, in green)")
        console.print(marked(ids.tolist(), labels.tolist(), tokenizer))
