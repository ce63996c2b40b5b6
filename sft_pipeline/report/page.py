"""One self-contained HTML page for a run: the plots inlined as base64 PNGs, the stage table,
training's numbers, before/after metrics and answers. No script, stylesheet or image is fetched,
so the page can be mailed, attached to an issue or opened offline."""

from __future__ import annotations

import base64
import datetime as _dt
import statistics
from html import escape
from pathlib import Path
from typing import Any

from .collect import Contents, series

STYLE = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}pre{white-space:pre-wrap;margin:0;font-size:12px}
.plots img{width:48%;min-width:380px;margin:0 1% 1em 0}.note{color:#8a5a00}"""


class Markup(str):
    """A cell already rendered as HTML (its text escaped when it was made)."""


def _cell(value: Any, numeric: bool) -> str:
    text = value if isinstance(value, Markup) else escape(str(value))
    return f'<td class="num">{text}</td>' if numeric else f"<td>{text}</td>"


def _table(header: list[str], rows: list[list[Any]], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(c, i in numeric) for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _pre(text: str) -> Markup:
    return Markup(f"<pre>{escape(text)}</pre>")


def _num(v: Any, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def training_numbers(c: Contents) -> list[list[Any]]:
    m = c.metrics
    _, mfu = series(c.scalars, "train/mfu")
    _, loss = series(c.scalars, "train/loss")
    peak = m.get("peak_rss_bytes") or m.get("peak_gpu_bytes")
    return [
        ["optimizer steps", m.get("steps")],
        ["precision", m.get("precision")],
        ["first / last logged loss", f"{_num(loss[0] if loss else None, '.4f')} / {_num(loss[-1] if loss else None, '.4f')}"],
        ["tokens/s (median step)", _num(m.get("tokens_per_second"), ".1f")],
        ["MFU (median logging step)", _num(statistics.median(mfu) if mfu else None, ".2%")],
        ["peak memory / prepare's estimate",
         f"{_num(peak / 1024**3 if peak else None, '.2f')} GiB / {_num(m.get('memory_estimate_gib'), '.2f')} GiB"],
        ["resumed from", m.get("resumed_from") or "-"],
    ]


def evaluation_rows(report: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for split in report["before"]["loss"]:
        rows.append([f"{split} loss", f"{report['before']['loss'][split]:.4f}", f"{report['after']['loss'][split]:.4f}"])
        if "perplexity" in report["before"]:
            rows.append([f"{split} perplexity", f"{report['before']['perplexity'][split]:.2f}",
                         f"{report['after']['perplexity'][split]:.2f}"])
    if "style_share" in report["before"]:
        rows.append([f"style share ({report['prompts']} {report['split']} prompts)",
                     f"{report['before']['style_share']:.0%}", f"{report['after']['style_share']:.0%}"])
    rows += harness_rows(report)
    return rows


def harness_rows(report: dict[str, Any]) -> list[list[Any]]:
    """One row per lm-eval task and metric (evaluate.harness), the main metric first."""
    rows = []
    for task, after in (report["after"].get("harness") or {}).items():
        before = report["before"]["harness"][task]
        names = sorted(after["metrics"], key=lambda m: (m != after["main"], m))
        for metric in names:
            rows.append([f"lm-eval {task}: {metric} ({after['samples']} docs, {after['num_fewshot']}-shot)",
                         f"{before['metrics'][metric]:.4f}", f"{after['metrics'][metric]:.4f}"])
    return rows


def answer_rows(answers: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    styled = bool(answers) and "after_follows_style" in answers[0]
    header = ["prompt", "before", "after"] + (["style before / after"] if styled else [])
    rows = [[_pre(a["prompt"]), _pre(a["before"]), _pre(a["after"])]
            + ([f"{'yes' if a['before_follows_style'] else 'no'} / {'yes' if a['after_follows_style'] else 'no'}"]
               if styled else []) for a in answers]
    return header, rows


def render(c: Contents, images: dict[str, Path], notes: list[str]) -> str:
    when = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(c.name)}: sft-pipeline report</title>"
             f"<style>{STYLE}</style></head><body>",
             f"<h1>{escape(c.name)}</h1><p>run directory <code>{escape(c.path)}</code>; report made {when}</p>"]
    parts += [f"<p class='note'>{escape(n)}</p>" for n in notes]
    parts.append("<h2>Stages</h2>" + _table(["stage", "state", "seconds", "summary"], [list(r) for r in c.stages], {2}))
    parts.append("<h2>Training</h2>" + _table(["", "value"], training_numbers(c)))
    parts.append("<div class='plots'>" + "".join(
        f"<img alt='{escape(name)}' src='data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}'>"
        for name, path in images.items()) + "</div>")
    if c.evaluation is not None:
        parts.append("<h2>Before and after fine-tuning</h2>"
                     + _table(["metric", "before", "after"], evaluation_rows(c.evaluation), {1, 2}))
        header, rows = answer_rows(c.answers)
        parts.append(f"<h3>Answers ({len(rows)} prompts)</h3>" + _table(header, rows))
    parts.append("</body></html>")
    return "\n".join(parts)
