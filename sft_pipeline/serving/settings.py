"""The recipe as llama_cpp.server's own settings (ModelSettings, ServerSettings).

Both are pydantic-settings classes: a field not given is read from the environment under its
bare name (MODEL, N_CTX, API_KEY, ...), which a shell may hold for other reasons. Here they read
only SFT_PIPELINE_SERVE_<FIELD>, so the environment changes the server only when meant to, e.g.
SFT_PIPELINE_SERVE_API_KEY=... (every request then needs it as its bearer token).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from ..config import Recipe, RecipeError
from ..model.hardware import default_threads

if TYPE_CHECKING:
    from llama_cpp.server.settings import ModelSettings, ServerSettings

ENV_PREFIX = "SFT_PIPELINE_SERVE_"
# set from the recipe's own keys: serve.model_settings may not say them a second time
OWN = {"model": "--gguf / serve.quant", "model_alias": "name", "n_ctx": "serve.n_ctx", "n_threads": "serve.threads",
       "n_threads_batch": "serve.threads", "verbose": "serve.verbose", "seed": "generate.seed"}


def model_settings(recipe: Recipe, gguf: Path) -> "ModelSettings":
    """The model as llama_cpp.server loads it, named after the recipe (the `model` of requests).

    logits_all is off unless serve.model_settings turns it on: the server's default keeps
    n_ctx x vocabulary floats (400 MB for SmolLM2's 49k tokens at n_ctx 2048) for the logprobs
    field, which few clients ask for."""
    from llama_cpp.server.settings import ModelSettings

    cfg = recipe.serve
    unknown = sorted(set(cfg.model_settings) - set(ModelSettings.model_fields))
    if unknown:
        raise RecipeError(f"serve.model_settings: {', '.join(unknown)}: not a field of llama_cpp.server's ModelSettings")
    for key in sorted(set(cfg.model_settings) & set(OWN)):
        raise RecipeError(f"serve.model_settings.{key}: set by {OWN[key]}, not here")
    threads = cfg.threads or default_threads()[0]
    values = {"logits_all": False, **cfg.model_settings, "model": str(gguf), "model_alias": recipe.name,
              "n_ctx": cfg.n_ctx, "n_threads": threads, "n_threads_batch": threads, "verbose": cfg.verbose,
              "seed": recipe.generate.seed}
    try:
        return ModelSettings(_env_prefix=ENV_PREFIX, **values)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise RecipeError(f"serve.model_settings.{key}: {first['msg']} (got {first.get('input')!r})") from None


def server_settings(host: str, port: int) -> "ServerSettings":
    from llama_cpp.server.settings import ServerSettings

    return ServerSettings(_env_prefix=ENV_PREFIX, host=host, port=port)
