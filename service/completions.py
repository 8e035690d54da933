"""OpenAI's Chat Completions, the wire every OpenAI client speaks: the request it sends, the
chunks a stream of ours becomes (`ChunkCodec`, a codec like events.EVENTS), the object a
reply in one piece becomes, and the rate-limit headers OpenAI's clients read.

A stream here is an ordinary generation whose events are written as OpenAI writes them:

    start     -> delta {"role": "assistant", "content": ""}
    thinking  -> delta {"reasoning_content": step + "\\n"}  (as vLLM and DeepSeek send it)
    content   -> delta {"content": text}
    done      -> delta {}, finish_reason; a `usage` chunk with `stream_options.include_usage`;
                 then `data: [DONE]`
    error     -> data: {"error": {...}}, and the stream ends

each block with the event's `id:` (OpenAI's clients ignore it), so that a client that
comes back with `Last-Event-ID` resumes the same generation, as on /chat.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from .backends import Turn
from .errors import OpenAIError, openai_body
from .events import Event
from .generation import Generation

NAME = "completions"
# `done` reasons as OpenAI names them; a reply stopped on request simply stopped.
FINISH_REASONS = {"complete": "stop", "cancelled": "stop"}
# Rate-limit fields as OpenAI sends them, from the IETF ones of the same policy.
POLICIES = ("requests", "tokens")


# --- the request ---------------------------------------------------------------------------


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: StrictStr


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: StrictStr | list[TextPart]

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class CompletionRequest(BaseModel):
    """The fields this service reads; any others go to an OpenAI-compatible upstream as
    they came (and the demo backend ignores them)."""

    model_config = ConfigDict(extra="allow")

    model: StrictStr
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_completion_tokens: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    stop: StrictStr | Annotated[list[StrictStr], Field(max_length=4)] | None = None
    seed: int | None = None
    user: StrictStr | None = None
    n: Literal[1] | None = None  # one choice a request

    @property
    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def sampling(self) -> dict[str, Any]:
        """The fields that shape a reply (for the cache's key) and go upstream."""
        fields = ("temperature", "top_p", "stop", "seed", "user")
        chosen = {name: getattr(self, name) for name in fields if getattr(self, name) is not None}
        return {**chosen, **(self.model_extra or {})}


def request_schema() -> dict[str, Any]:
    """The request's JSON Schema for OpenAPI, its definitions written in place (an OpenAPI
    document has no `$defs` of its own for them to point to)."""
    schema = CompletionRequest.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(definitions[ref.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    inlined: dict[str, Any] = inline(schema)
    return inlined


COMPLETION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "chat.completion"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {"type": "array"},
        "usage": {"type": ["object", "null"]},
    },
}


def parse_request(raw: bytes, max_messages: int, max_chars: int) -> CompletionRequest:
    """The request, or a 400 naming what is wrong (OpenAI's clients map 400 to
    BadRequestError; /chat says 422 for the same)."""
    try:
        request = CompletionRequest.model_validate_json(raw)
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        param = ".".join(str(part) for part in error["loc"]) or None
        text = f"{param}: {error['msg']}" if param else error["msg"]
        raise OpenAIError(400, text, "invalid_value", param) from None
    if len(request.messages) > max_messages:
        raise OpenAIError(400, f"at most {max_messages} messages", "invalid_value", "messages")
    for n, each in enumerate(request.messages):
        if len(each.text) > max_chars:
            param = f"messages.{n}.content"
            raise OpenAIError(400, f"{param}: longer than {max_chars} characters", None, param)
    if request.messages[-1].role != "user" or not request.messages[-1].text.strip():
        raise OpenAIError(
            400, "the last message must be the user's, and not empty", "invalid_value", "messages"
        )
    return request


def history_of(request: CompletionRequest) -> list[Turn]:
    return [Turn(m.role, m.text) for m in request.messages[:-1]]


def subject_of(request: CompletionRequest) -> str:
    """What makes two requests the same reply, for the cache: the model, the whole message
    list and the fields that shape a reply."""
    shape = {
        "model": request.model,
        "messages": [[m.role, m.text] for m in request.messages],
        "sampling": request.sampling(),
        "limit": request.limit,
    }
    return json.dumps(shape, sort_keys=True, ensure_ascii=False)


# --- a stream in chunks --------------------------------------------------------------------


class ChunkCodec:
    """One stream's chunks: its `chatcmpl-...` id, `created` and model in every one, the
    fields around each delta written once and the delta encoded per event."""

    name = NAME

    def __init__(self, model: str = "", include_usage: bool = False) -> None:
        self.id = f"chatcmpl-{secrets.token_urlsafe(18)}"
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage
        head = {"id": self.id, "object": "chat.completion.chunk", "created": self.created}
        self._head = orjson.dumps({**head, "model": model})[:-1] + b',"choices":['
        self._delta = self._head + b'{"index":0,"delta":'

    def encode(self, event: Event, event_id: bytes) -> bytes:
        name, data = event.name, event.data
        if name == "content":
            delta = {"content": data.get("text", "")}
        elif name == "thinking":
            delta = {"reasoning_content": f"{data.get('step', '')}\n"}
        elif name == "start":
            delta = {"role": "assistant", "content": ""}
        elif name == "done":
            return self._finish(data, event_id)
        else:  # error
            return _block(event_id, orjson.dumps(_stream_error(data)))
        chunk = self._delta + _dumps(delta) + b',"logprobs":null,"finish_reason":null}]}'
        return _block(event_id, chunk)

    def _finish(self, data: Mapping[str, Any], event_id: bytes) -> bytes:
        reason = finish_reason(data)
        last = self._delta + b'{},"logprobs":null,"finish_reason":' + _dumps(reason) + b"}]}"
        blocks = [_block(event_id, last)]
        usage = data.get("usage")
        if self.include_usage and isinstance(usage, dict):
            blocks.append(_block(event_id, self._head + b'],"usage":' + _dumps(usage) + b"}"))
        blocks.append(_block(event_id, b"[DONE]"))
        return b"".join(blocks)


def _block(event_id: bytes, data: bytes) -> bytes:
    return b"id: %s\ndata: %s\n\n" % (event_id, data)


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:  # a lone surrogate: written ASCII-escaped, as events.encode does
        return json.dumps(value, separators=(",", ":")).encode()


def finish_reason(data: Mapping[str, Any]) -> str:
    reason = str(data.get("reason", "stop"))
    return FINISH_REASONS.get(reason, reason)


def _stream_error(data: Mapping[str, Any]) -> dict[str, Any]:
    code = str(data.get("code", "internal"))
    kind = "server_error" if code in ("internal", "shutdown", "interrupted") else "api_error"
    return openai_body(str(data.get("message", "error")), kind, code)


# A codec for what a worker says itself in another's stream (its `shutdown`): errors only.
FOLLOWER = ChunkCodec()


# --- a reply in one piece ------------------------------------------------------------------


def completion_of(generation: Generation, codec: ChunkCodec) -> dict[str, Any]:
    """The `chat.completion` object of a generation that ended by itself, with its usage."""
    message: dict[str, Any] = {"role": "assistant", "content": "".join(generation.text)}
    if generation.reasoning:
        message["reasoning_content"] = "\n".join(generation.reasoning)
    ending = generation.ending
    usage = generation.usage
    return {
        "id": codec.id,
        "object": "chat.completion",
        "created": codec.created,
        "model": codec.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finish_reason(ending.data if ending else {}),
            }
        ],
        "usage": usage.as_data() if usage else None,
    }


def failure_of(generation: Generation) -> OpenAIError:
    """A generation that ended in an error, as the error of an answer in one piece."""
    data = generation.ending.data if generation.ending else {}
    body = _stream_error(data)["error"]
    status = 503 if generation.outcome == "shutdown" or body["code"] == "shutdown" else 502
    return OpenAIError(status, str(body["message"]), body["code"], None, body["type"])


# --- rate-limit headers --------------------------------------------------------------------


def limits(headers: dict[str, str]) -> dict[str, str]:
    """Beside the IETF `RateLimit` fields, OpenAI's own for each policy there:
    `x-ratelimit-limit-requests`, `-remaining-`, `-reset-` (a duration like `6m0s`), and
    the `-tokens` trio when a budget is set."""
    quotas = _items(headers.get("RateLimit-Policy", ""), "q")
    standing = _items(headers.get("RateLimit", ""), "r", "t")
    shaped = dict(headers)
    for policy in POLICIES:
        if policy in quotas and policy in standing:
            remaining, reset = standing[policy]
            shaped[f"x-ratelimit-limit-{policy}"] = quotas[policy][0]
            shaped[f"x-ratelimit-remaining-{policy}"] = remaining
            shaped[f"x-ratelimit-reset-{policy}"] = duration(int(reset))
    return shaped


def _items(field: str, *keys: str) -> dict[str, list[str]]:
    """`"requests";q=20;w=60, "tokens";q=...` -> {"requests": ["20"], ...}."""
    found: dict[str, list[str]] = {}
    for item in field.split(","):
        name, *params = item.strip().split(";")
        values = dict(param.split("=", 1) for param in params if "=" in param)
        if all(key in values for key in keys):
            found[name.strip('"')] = [values[key] for key in keys]
    return found


def duration(seconds: int) -> str:
    """Seconds as OpenAI writes a reset time: `6m0s`, `1h2m3s`, `7s`."""
    hours, rest = divmod(max(0, seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"
