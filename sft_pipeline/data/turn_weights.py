"""Per-turn training weights, as other tools write them on a turn: `loss_weight` (0 or 1),
`weight` (0 or 1, axolotl's ShareGPT), `train` / `training` (false or true).

A weight of 0 (or `train: false`) on an assistant turn keeps the turn in the text as context
and leaves its span untrained; 1, true or no key at all trains it as every assistant turn is
trained. The normalized turn then carries `train: false`; nothing else is stored.

A fractional weight (0.5) is refused, with the record and the value, and never rounded: the
training loss here is a plain mean over labelled tokens (training/loss.py, and TRL's own loss
where that one is not used), with no per-token weight to carry it, and rounding it to 0 or 1
would train something other than what the data asks for.

User, system and tool turns are never trained (`pack.loss_on: assistant`), so a weight there
is checked like any other and changes nothing; under `loss_on: all` every token is trained,
weights included, as that setting says.
"""

from __future__ import annotations

from typing import Any

from ..errors import PipelineError

KEYS = ("loss_weight", "weight", "train", "training")
NO_TRAINED_TURN = "no_trained_turn"  # every assistant turn has weight 0: nothing to train on
DISAGREE = "bad_turn_weight"  # two weight keys on one turn that say different things


class TurnWeightError(PipelineError, ValueError):
    """A weight this pipeline cannot honour exactly (fractional, negative, above 1); the load
    stage adds the record's file and line."""


def _trains(key: str, value: Any, where: str) -> tuple[bool | None, str | None]:
    if isinstance(value, bool):
        return value, None
    if key in ("train", "training") or not isinstance(value, (int, float)):
        return None, f"wrong_type:{key}"
    if value in (0, 1):
        return bool(value), None
    raise TurnWeightError(
        f"{where}.{key}: {value!r}: only 0 or 1 can be honoured (the loss has no per-token weights, "
        "and rounding would train on something else); make it 0 or 1")


def turn_trains(turn: dict[str, Any], where: str) -> tuple[bool, str | None]:
    """(whether the turn's span is trained, the reason the record is dropped or None).
    `where` names the turn in an error, e.g. "messages[3]"."""
    said: set[bool] = set()
    for key in KEYS:
        if turn.get(key) is None:
            continue
        trains, why = _trains(key, turn[key], where)
        if why:
            return True, why
        said.add(bool(trains))
    if len(said) > 1:
        return True, DISAGREE
    return (not said or said.pop()), None


def check_trained(messages: list[dict[str, Any]]) -> str | None:
    """A conversation whose every assistant turn is untrained would train on nothing."""
    answers = [m for m in messages if m["role"] == "assistant"]
    if answers and all(m.get("train") is False for m in answers):
        return NO_TRAINED_TURN
    return None
