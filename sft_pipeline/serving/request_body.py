"""What a completion request's body must be before llama_cpp.server sees it.

Checked: llama_cpp.server answers a body that is not JSON, or does not fit its own request model
(messages not a list, max_tokens not a number), with 500 Internal Server Error (its RouteErrorHandler
wraps every exception so; llama-cpp-python PR #481 says so), which tells a client to retry a
request that can never succeed. Here such a body gets 400 and OpenAI's error shape, the status
the openai client raises BadRequestError for, from a check against the server's own request
models (llama_cpp.server.types), so what passes is what the server accepts, less one thing: a
chat without messages, which OpenAI's API refuses and the server would answer.

Filled in: its request models carry defaults of their own (temperature 0.8, top_p 0.95, top_k 40,
min_p 0.05, repeat_penalty 1.1, max_tokens 16 for completions), and its settings cannot change
them: a client that leaves them out would get sampled answers from a model whose `generate` and
`evaluate` answer greedily. So fields a body leaves out (or sends as null) are set from the
recipe's generate section first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from pydantic import BaseModel, ValidationError

from ..config import GenerateConfig

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def request_models() -> dict[str, type[BaseModel]]:
    """The path of each completion endpoint -> the server's model of its request body."""
    from llama_cpp.server.types import CreateChatCompletionRequest, CreateCompletionRequest

    return {"/v1/chat/completions": CreateChatCompletionRequest, "/v1/completions": CreateCompletionRequest}


def from_generate(cfg: GenerateConfig) -> dict[str, Any]:
    """Request fields (llama_cpp.server's names) for the generate section. do_sample false is
    temperature 0 (llama.cpp's greedy sampler); min_p 0 because transformers' generate, which
    `generate` and `evaluate` use, has no min-p cut unless asked for one."""
    return {"max_tokens": cfg.max_new_tokens, "temperature": cfg.temperature if cfg.do_sample else 0.0,
            "top_p": cfg.top_p, "top_k": cfg.top_k, "min_p": 0.0, "repeat_penalty": cfg.repetition_penalty,
            "seed": cfg.seed}


@dataclass(frozen=True)
class Problem:
    """Why a body is refused: the message and the field (OpenAI's `param`) of a 400 answer."""

    message: str
    param: str | None = None


def checked(body: bytes, model: type[BaseModel], defaults: dict[str, Any]) -> bytes | Problem:
    """The body with its absent (or null) fields set from `defaults`, or the first Problem where it
    is not a JSON object that `model` accepts."""
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        return Problem(f"the request body is not valid JSON: {err}")
    if not isinstance(request, dict):
        return Problem(f"the request body is a JSON {type(request).__name__}, not an object")
    if "messages" in model.model_fields and not request.get("messages"):
        # the server's model defaults messages to [] and answers an empty chat; OpenAI's API
        # requires at least one message
        return Problem("messages: a chat completion needs at least one message", param="messages")
    request = {**request, **{k: v for k, v in defaults.items() if request.get(k) is None}}
    try:
        model.model_validate(request)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        more = f" ({err.error_count() - 1} more)" if err.error_count() > 1 else ""
        return Problem(f"{where}: {first['msg']}{more}", param=where)
    return json.dumps(request).encode()


class CompletionRequests:
    """ASGI middleware for the POSTs to the completion endpoints: 400 for a body the server would
    refuse, defaults filled into the rest; every other request passes untouched."""

    def __init__(self, app: ASGIApp, defaults: dict[str, Any]):
        self.app = app
        self.defaults = defaults
        self.models = request_models()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        model = self.models.get(scope.get("path", "")) if scope["type"] == "http" and scope["method"] == "POST" else None
        if model is None:
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before its body arrived: nobody to answer
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = checked(b"".join(chunks), model, self.defaults)
        if isinstance(body, Problem):
            await _answer(send, 400, {"error": {"message": body.message, "type": "invalid_request_error",
                                                "param": body.param, "code": None}})
            return
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
        scope = {**scope, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the disconnect a streaming answer watches for

        await self.app(scope, replay, send)


async def _answer(send: Send, status: int, payload: dict[str, Any]) -> None:
    data = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})
