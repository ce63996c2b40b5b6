"""Send a staged folder to the Hub: create the repository (exist_ok) and upload the folder in one
commit, with HfApi.

The token comes from HF_TOKEN only, never from huggingface_hub's saved login: which account a
push writes to is then what the command's environment says, not a file left on the box. It is
passed to HfApi in memory and goes nowhere else (not the card, the staged folder, the logs, the
record push writes). The endpoint is HF_ENDPOINT when set (read here, at call time: huggingface_hub
reads it once, at import), else the public Hub.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..rundir.files import now, write_json
from .stage import PushError, Staged

DEFAULT_ENDPOINT = "https://huggingface.co"


def token_from_env() -> str:
    token = os.environ.get("HF_TOKEN", "").strip()
    if not token:
        raise PushError("push: HF_TOKEN is not set: export a Hub token with write access (or use --dry-run)")
    return token


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or DEFAULT_ENDPOINT


def upload(staged: Staged, repo_id: str, private: bool | None = None) -> str:
    """Upload the staged folder as one commit to the model repository `repo_id`; returns the
    commit's URL and records it (repo, endpoint, commit, files; no token) in push/<what>.json."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    token = token_from_env()
    where = endpoint()
    api = HfApi(endpoint=where, token=token)
    try:
        api.create_repo(repo_id, repo_type="model", exist_ok=True, private=private)
        info = api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(staged.folder),
                                 commit_message=f"sft-pipeline push: {staged.folder.name}")
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PushError(f"push: {where} refused {repo_id} (HTTP {status}): {first}") from None
    record: Path = staged.folder.parent / f"{staged.folder.name}.json"
    write_json(record, {"repo_id": repo_id, "endpoint": where, "commit_url": info.commit_url, "commit": info.oid,
                        "files": staged.files, "pushed": now()})
    return info.commit_url
