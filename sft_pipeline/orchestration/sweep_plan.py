"""A sweep file made into trials: each one a validated recipe with its own name and run directory.

Everything is decided here before any work: the sweep file's own keys, every swept key against
the recipe schema, and every trial's recipe (so a bad value in the fifth trial stops the sweep
before the first one loads a model). Names come from the trials' values as the schema reads them
(`lr 1e-3` and `0.001` are one value), so they are stable across runs of the same sweep file:
that is how a second run finds the trials the first one finished.

    name: lora-r                       # default: the file's stem
    base: demo.yaml                    # a recipe file, relative to this file; or a recipe inline
    set: {train.max_steps: 8}          # the same for every trial
    grid: {lora.r: [8, 16]}            # every combination of these lists
    zip:                               # lists taken together, value i with value i
      - {lora.r: [8, 16], lora.lora_alpha: [16, 32]}
    random:                            # `count` draws, seeded; crossed with the grid's trials
      count: 4
      seed: 0
      params:
        train.learning_rate: {log_uniform: [1.0e-4, 1.0e-2]}
        lora.lora_dropout: {uniform: [0.0, 0.1]}
        lora.r: {choice: [4, 8, 16]}
    until: train                       # the last of the six stages each trial runs
    evaluate: false                    # then `evaluate` too (loss and style, before and after)
    sweep_dir: runs/sweeps/lora-r      # default: runs/sweeps/<name>
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import random
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..config import (
    Recipe,
    RecipeError,
    _format_error,
    _set_dotted,
    parse_overrides,
    read_yaml,
    recipe_from_dict,
    set_key,
)
from ..stages import ORDER

# the keys a sweep sets itself in every trial
SWEEP_SET = {"name": "the trial's name", "run_dir": "the trial's folder under the sweep's",
             "tracking.group": "the sweep's name"}
# short names for keys in trial names; any other key goes by its last part
ALIASES = {"lora_alpha": "alpha", "lora_dropout": "dropout", "learning_rate": "lr", "per_device_train_batch_size": "bs",
           "gradient_accumulation_steps": "accum", "num_train_epochs": "epochs", "max_steps": "steps",
           "seq_length": "seq", "weight_decay": "wd", "warmup_steps": "warmup", "lr_scheduler_type": "sched",
           "target_modules": "targets", "use_rslora": "rslora"}
MAX_NAME = 64  # characters; longer names are cut and made unique with a digest of the values
DRAW_DIGITS = 3  # significant digits a drawn float keeps, so its name and its value agree


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Draw(_Strict):
    """One random parameter: exactly one of a choice list, a uniform or a log-uniform range."""

    choice: list[Any] | None = Field(default=None, min_length=1)
    uniform: tuple[float, float] | None = None
    log_uniform: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _one(self) -> "Draw":
        given = [k for k in ("choice", "uniform", "log_uniform") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of choice, uniform, log_uniform")
        bounds = self.uniform or self.log_uniform
        if bounds is not None and not bounds[0] < bounds[1]:
            raise ValueError(f"the range's low end must be below its high end (got {list(bounds)})")
        if self.log_uniform is not None and self.log_uniform[0] <= 0:
            raise ValueError(f"log_uniform needs a positive low end (got {self.log_uniform[0]})")
        return self


class RandomSpec(_Strict):
    count: int = Field(ge=1)
    seed: int = 0
    params: dict[str, Draw] = Field(min_length=1)


class SweepFile(_Strict):
    name: str | None = None
    base: str | dict[str, Any]
    set: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    zip: list[dict[str, list[Any]]] = Field(default_factory=list)
    random: RandomSpec | None = None
    until: str = "train"
    evaluate: bool = False
    sweep_dir: str | None = None

    @model_validator(mode="after")
    def _checks(self) -> "SweepFile":
        if self.until not in ORDER:
            raise ValueError(f"until: {self.until!r} is not a stage ({', '.join(ORDER)})")
        if not (self.grid or self.zip or self.random):
            raise ValueError("nothing to sweep: give grid, zip or random")
        for key, values in self.grid.items():
            if not values:
                raise ValueError(f"grid: {key}: an empty list")
        for group in self.zip:
            lengths = {key: len(values) for key, values in group.items()}
            if len(set(lengths.values())) > 1 or 0 in lengths.values():
                raise ValueError("zip: lists taken together need one length >= 1 (got "
                                 + ", ".join(f"{k}: {n}" for k, n in lengths.items()) + ")")
        return self


@dataclass(frozen=True)
class Trial:
    name: str
    values: dict[str, Any]  # swept key -> its value as the schema reads it
    recipe: Recipe

    @property
    def run_dir(self) -> Path:
        return self.recipe.resolved_run_dir()


@dataclass(frozen=True)
class SweepPlan:
    name: str
    folder: Path
    keys: tuple[str, ...]  # the swept keys, in the sweep file's order
    log_keys: tuple[str, ...]  # keys drawn log-uniform: plotted on a log axis
    stages: tuple[str, ...]  # what each trial runs, in order
    trials: tuple[Trial, ...]
    origin: str

    def trial(self, name: str) -> Trial:
        return next(t for t in self.trials if t.name == name)


# ---- the schema ---------------------------------------------------------------------------------

def _kinds(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [k for arg in typing.get_args(annotation) for k in _kinds(arg)]
    return [annotation]


def schema_field(key: str, origin: str) -> Any:
    """The annotation of the recipe key `a.b`; RecipeError naming it when the schema has no
    such key. A key under a mapping field (train.extra_args.optim) is the mapping's business."""
    model: Any = Recipe
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            raise RecipeError(f"{origin}: {key}: unknown key")
        annotation = fields[part].annotation
        kinds = _kinds(annotation)
        nested = [k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)]
        if i == len(parts) - 1:
            return annotation
        if nested:
            model = nested[0]
        elif any(typing.get_origin(k) is dict or k is dict for k in kinds):
            return Any
        else:
            raise RecipeError(f"{origin}: {key}: '{part}' is not a section")
    return Any  # pragma: no cover (the loop returns)


def _is_int(annotation: Any) -> bool:
    kinds = [k for k in _kinds(annotation) if k is not type(None)]
    return int in kinds and float not in kinds


def _pick(recipe: Recipe, key: str) -> Any:
    node: Any = recipe
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else getattr(node, part)
    return node.model_dump(mode="json") if hasattr(node, "model_dump") else node


# ---- trials' values ------------------------------------------------------------------------------

def draw(spec: Draw, rng: random.Random, integer: bool) -> Any:
    """One value of a random parameter; floats keep DRAW_DIGITS significant digits, an integer
    key's ranges give integers (log-uniform rounded)."""
    if spec.choice is not None:
        return rng.choice(spec.choice)
    if spec.uniform is not None:
        lo, hi = spec.uniform
        if integer:
            return rng.randint(math.ceil(lo), math.floor(hi))
        value = rng.uniform(lo, hi)
    else:
        lo, hi = spec.log_uniform  # type: ignore[misc]
        value = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        if integer:
            return min(max(round(value), math.ceil(lo)), math.floor(hi))
    return float(f"{value:.{DRAW_DIGITS}g}")


def points(sweep: SweepFile, origin: str) -> list[dict[str, Any]]:
    """Each trial's swept values: the grid's lists and each zip group as axes of a product
    (first key outermost), crossed with `random.count` distinct seeded draws."""
    axes: list[list[dict[str, Any]]] = [[{key: v} for v in values] for key, values in sweep.grid.items()]
    axes += [[dict(zip(group, row)) for row in zip(*group.values())] for group in sweep.zip]
    if sweep.random is not None:
        axes.append(random_draws(sweep.random, origin))
    return [{k: v for part in combo for k, v in part.items()} for combo in itertools.product(*axes)]


def random_draws(spec: RandomSpec, origin: str) -> list[dict[str, Any]]:
    """`count` different draws of the params from one generator seeded with `seed` (a draw equal
    to an earlier one is drawn again, so a small choice space runs out rather than repeats)."""
    rng = random.Random(spec.seed)
    integer = {key: _is_int(schema_field(key, f"{origin}: random.params")) for key in spec.params}
    found: list[dict[str, Any]] = []
    seen: set[str] = set()
    for _ in range(100 * spec.count):
        values = {key: draw(d, rng, integer[key]) for key, d in spec.params.items()}
        digest = json.dumps(values, sort_keys=True, default=str)
        if digest not in seen:
            seen.add(digest)
            found.append(values)
            if len(found) == spec.count:
                return found
    raise RecipeError(f"{origin}: random: only {len(found)} different draws of the params exist; "
                      f"lower random.count ({spec.count}) or widen the params")


# ---- names ----------------------------------------------------------------------------------------

def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if value == int(value) and abs(value) < 1e6:
            return str(int(value))
        text = f"{value:.4g}"
        return re.sub(r"e([+-])0*(\d)", lambda m: f"e{'-' if m[1] == '-' else ''}{m[2]}", text)
    if isinstance(value, (list, tuple)):
        return "+".join(_value_text(v) for v in value)
    if value is None:
        return "none"
    return str(value)


def labels(keys: list[str]) -> dict[str, str]:
    """Each key's label in trial names: its alias or last part; the whole key where two share one."""
    short = {key: ALIASES.get(key.split(".")[-1], key.split(".")[-1]) for key in keys}
    clash = {s for s in short.values() if list(short.values()).count(s) > 1}
    return {key: key.replace(".", "_") if s in clash else s for key, s in short.items()}


def trial_names(values: list[dict[str, Any]], keys: list[str]) -> list[str]:
    """Short, filesystem-safe names from the values (`r8-alpha16`), in the keys' order; where two
    would be equal after shortening, or a name is too long, a digest of the values is added."""
    label = labels(keys)

    def plain(vals: dict[str, Any]) -> str:
        parts = []
        for key in keys:
            text = _value_text(vals[key])
            parts.append(label[key] + (text if re.match(r"[0-9.]", text) else f"_{text}"))
        return re.sub(r"[^A-Za-z0-9._-]", "_", "-".join(parts))

    def digest(vals: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(vals, sort_keys=True, default=str).encode()).hexdigest()[:6]

    names = [plain(v) for v in values]
    out = []
    for vals, name in zip(values, names):
        if names.count(name) > 1 or len(name) > MAX_NAME:
            name = f"{name[: MAX_NAME - 7]}-{digest(vals)}"
        out.append(name)
    return out


# ---- the plan -------------------------------------------------------------------------------------

def _swept_keys(sweep: SweepFile, origin: str) -> list[str]:
    """Every key a trial's values set, once each, in the file's order; each checked against the
    schema, none of them one the sweep sets itself or one `set` fixes."""
    keys: list[str] = []
    sources = [("grid", list(sweep.grid)), *(("zip", list(g)) for g in sweep.zip),
               ("random.params", list(sweep.random.params) if sweep.random else [])]
    for where, names in sources:
        for key in names:
            if key in keys or key in sweep.set:
                raise RecipeError(f"{origin}: {where}: {key}: swept twice (or also in set)")
            if key in SWEEP_SET:
                raise RecipeError(f"{origin}: {where}: {key}: set by the sweep ({SWEEP_SET[key]})")
            schema_field(key, f"{origin}: {where}")
            keys.append(key)
    return keys


def load_sweep(path: str | Path, overrides: list[str] | None = None, sweep_dir: str | Path | None = None) -> SweepPlan:
    """Read and check a sweep file and make its trials; RecipeError (one line naming the key) for
    anything wrong in it, its base recipe or any trial. `overrides` (`--set`) apply to the base."""
    path = Path(path)
    origin = str(path)
    tree = read_yaml(path, "sweep")
    if not isinstance(tree, dict):
        raise RecipeError(f"{origin}: a sweep file is a mapping (base, grid, zip, random, ...)")
    try:
        sweep = SweepFile.model_validate(tree)
    except ValidationError as err:
        raise RecipeError(_format_error(err, origin).replace(": Value error, ", ": ")) from None
    name = sweep.name or path.stem
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise RecipeError(f"{origin}: name: {name!r}: letters, digits, '.', '_' and '-' only (it names a folder)")
    base_origin = origin
    if isinstance(sweep.base, str):
        base_path = path.parent / sweep.base
        base_origin = str(base_path)
        base = read_yaml(base_path, "base recipe")
        if not isinstance(base, dict):
            raise RecipeError(f"{base_path}: a recipe is a mapping of sections, got {type(base).__name__}")
    else:
        base = copy.deepcopy(sweep.base)
    for key, value in sweep.set.items():
        if key in SWEEP_SET:
            raise RecipeError(f"{origin}: set: {key}: set by the sweep ({SWEEP_SET[key]})")
        schema_field(key, f"{origin}: set")
        set_key(base, key, value, f"{origin}: set: {key}")
    keys = _swept_keys(sweep, origin)
    for key, raw in parse_overrides(overrides):
        if key in keys:
            raise RecipeError(f"--set {key}: a swept key of {origin}")
        _set_dotted(base, key, raw)
    recipe_from_dict(base, base_origin)  # the base's own mistakes named as the base's

    folder = Path(sweep_dir) if sweep_dir is not None else Path(sweep.sweep_dir or Path("runs") / "sweeps" / name)
    recipes, values = [], []
    for i, point in enumerate(points(sweep, origin), 1):
        trial_tree = copy.deepcopy(base)
        where = f"{origin}: trial {i} (" + ", ".join(f"{k}={v}" for k, v in point.items()) + ")"
        for key, value in point.items():
            set_key(trial_tree, key, value, where)
        recipe = recipe_from_dict(trial_tree, where)
        recipes.append(recipe)
        values.append({key: _pick(recipe, key) for key in keys})
    for i, vals in enumerate(values):
        if vals in values[:i]:
            first = values.index(vals) + 1
            raise RecipeError(f"{origin}: trials {first} and {i + 1} have the same values "
                              f"({', '.join(f'{k}={v}' for k, v in vals.items())}): remove one")
    trials = []
    for recipe, vals, trial_name in zip(recipes, values, trial_names(values, keys)):
        recipe.name = trial_name
        recipe.run_dir = str(folder / trial_name)
        recipe.tracking.group = name
        trials.append(Trial(trial_name, vals, recipe))
    stages = (*ORDER[: ORDER.index(sweep.until) + 1], *(("evaluate",) if sweep.evaluate else ()))
    log_keys = tuple(k for k, d in (sweep.random.params.items() if sweep.random else ()) if d.log_uniform)
    return SweepPlan(name, folder, tuple(keys), log_keys, stages, tuple(trials), origin)
