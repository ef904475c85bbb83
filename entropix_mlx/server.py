"""An OpenAI-compatible HTTP API: one model, one generation worker batching the requests.

Routes: POST /v1/chat/completions, POST /v1/completions (streaming as server-sent events
or not), GET /v1/models, GET /health. Errors are OpenAI-shaped JSON:
`{"error": {"message", "type", "param", "code"}}`.
"""

import asyncio
import contextlib
import dataclasses
import functools
import hmac
import ipaddress
import json
import logging
import math
import resource
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import (
    Any,
    AsyncIterator,
    Callable,
    Dict,
    List,
    Optional,
    Tuple,
    Union,
)

import h11
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from .engine.prompt import chat_prompt_ids, fit_prompt, literal_prompt_ids
from .engine.seeds import row_seeds
from .errors import ConfigError, ContextLengthError, EntropixError
from .loading import ModelInfo
from .sampling import SamplerConfig
from .scheduler import (
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_QUEUE,
    DEFAULT_PROMPT_CACHE_BYTES,
    Busy,
    Delta,
    Failure,
    Finish,
    GenerationRequest,
    GenerationWorker,
    Job,
    TokenLogprob,
)

DEFAULT_MAX_TOKENS_LIMIT = 512
MAX_TOP_LOGPROBS = 20  # OpenAI's bounds: chat top_logprobs, completions logprobs
MAX_COMPLETION_LOGPROBS = 5
MAX_STOP_STRINGS = 16  # OpenAI allows 4; each is searched for after every token of its row
RETRY_AFTER_SECONDS = 2
MAX_BODY_BYTES = 1_000_000
BODY_TIMEOUT_SECONDS = 30.0  # a request's body must arrive within this after its head
IDLE_TIMEOUT_SECONDS = 5  # uvicorn's keep-alive default, also applied before a first request
MAX_CONNECTIONS = 1024  # open connections at most (and half the file descriptors at most)
# Connections accepted per turn of the event loop (and the kernel's queue of them): a burst of
# connections over the limit takes descriptors until each is closed, a few turns later.
BACKLOG = 128
PEER_CHECK_SECONDS = 0.25  # how often a half-closed connection's client is checked for
HEARTBEAT_SECONDS = 1.0  # a stream with nothing to send sends an SSE comment this often
MODEL_ALIASES = ("default",)
CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}

SAMPLER_SETTINGS = {f.name for f in dataclasses.fields(SamplerConfig)}

log = logging.getLogger("entropix_mlx.server")


# --- Errors ---------------------------------------------------------------------------


class APIError(Exception):
    """A request the server refuses, with the HTTP status and OpenAI error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        param: Optional[str] = None,
        code: Optional[str] = None,
        type: str = "invalid_request_error",
        headers: Optional[Dict[str, str]] = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = (
            status,
            message,
            param,
            code,
            type,
        )
        self.headers = headers

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def on_api_error(request: Request, error: APIError) -> JSONResponse:
    return error_response(error)


async def on_http_error(request: Request, error: HTTPException) -> JSONResponse:
    if error.status_code == 404:
        message = f"no route {request.method} {request.url.path}; see GET /v1/models, POST /v1/chat/completions"
        return error_response(APIError(404, message, code="not_found"))
    if error.status_code == 405:
        allowed = (error.headers or {}).get("Allow", "")
        message = f"{request.method} is not allowed on {request.url.path}; use {allowed}"
        return error_response(APIError(405, message, code="method_not_allowed"))
    return error_response(APIError(error.status_code, str(error.detail), code="http_error"))


@contextlib.contextmanager
def library_checks(prompt_param: str, settings_from: Dict[str, str] = {}):
    """Turn the library's refusals (`EntropixError`) into OpenAI errors: the one place where the
    server maps them. The error's `param` names the library's argument; the request's field of
    that argument is reported. A sampler setting's field is the one `settings_from` names for
    it (`temp` from `temperature`), else `entropix`."""
    try:
        yield
    except EntropixError as e:
        param = {"prompt": prompt_param, "config": "entropix"}.get(e.param, e.param)
        if param in SAMPLER_SETTINGS:
            param = settings_from.get(param, "entropix")
        message = str(e)
        if isinstance(e, ConfigError) and param in (None, "entropix"):
            param, message = "entropix", f"invalid 'entropix' settings: {e}"
        code = "context_length_exceeded" if isinstance(e, ContextLengthError) else "invalid_value"
        raise APIError(400, message, param=param, code=code) from None


async def on_unexpected_error(request: Request, error: Exception) -> JSONResponse:
    return error_response(
        APIError(500, f"internal error: {error}", type="server_error", code="internal_error")
    )


# --- Request validation ----------------------------------------------------------------

JSON_TYPES = {
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


@dataclass(frozen=True)
class RequestOptions:
    """How to answer: streaming or not, and the model name to echo."""

    stream: bool
    include_usage: bool
    model: str


async def read_json_body(request: Request, limit: int, timeout: float) -> dict:
    """The request's JSON object: 415 unless sent as application/json (so that no web page can
    send it as a CORS "simple request"), 413 past `limit` bytes (checked before parsing), 408 if
    it takes over `timeout` seconds to arrive, 400 if not JSON."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise APIError(
            415,
            f"the request body must be sent as Content-Type: application/json, not "
            f"{media_type or 'without a Content-Type'}",
            code="unsupported_media_type",
        )
    too_large = APIError(
        413,
        f"the request body is over {limit} bytes; send a shorter prompt",
        code="request_too_large",
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise too_large
    except TimeoutError:
        raise APIError(
            408,
            f"the request body did not arrive within {timeout:g} s; send it at once",
            code="request_timeout",
        ) from None
    except ClientDisconnect:
        log.info("a client disconnected while sending its request body")
        raise APIError(
            400,
            "the client disconnected before its request body arrived",
            code="client_disconnected",
        ) from None
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except RecursionError:
        raise APIError(
            400,
            "the request body nests JSON too deeply; send a flatter object",
            code="invalid_json",
        ) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise APIError(
            400,
            f"the request body is not valid JSON ({e}); send a JSON object",
            code="invalid_json",
        ) from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    return data


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def get_field(body: dict, name: str, json_type: str, default: Any = None) -> Any:
    """`body[name]` if present and not null, checked to be of `json_type`; else `default`."""
    value = body.get(name)
    if value is None:
        return default
    if not JSON_TYPES[json_type](value):
        raise APIError(
            400,
            f"'{name}' must be {_with_article(json_type)}, not {_json_type_name(value)}",
            param=name,
            code="invalid_type",
        )
    if json_type == "number" and not is_finite(value):
        raise APIError(422, f"'{name}' must be a finite number", param=name, code="invalid_value")
    return value


def is_finite(number) -> bool:
    """Whether a JSON number is finite as a float (1e400 is read as inf, 10**400 as an int)."""
    try:
        return math.isfinite(number)
    except OverflowError:
        return False


def _json_type_name(value: Any) -> str:
    return next((name for name, check in JSON_TYPES.items() if check(value)), "null")


def _with_article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


@dataclass(frozen=True)
class Field:
    """A scalar request field: its JSON type, its value when absent or null, and a rule the
    value must meet (a 422 saying `'name' <rule>, got <value>` otherwise)."""

    type: str
    default: Any = None
    ok: Callable[[Any], bool] = lambda value: True
    rule: str = ""


def in_range(low: int, high: int) -> dict:
    return dict(ok=lambda v: low <= v <= high, rule=f"must be in [{low}, {high}]")


# The scalar fields of both APIs: JSON type, value when absent or null, rule a value must meet.
FIELDS = {
    "stream": Field("boolean", False),
    "stream_options": Field("object", {}),
    "max_tokens": Field("integer", None, lambda v: v >= 1, "must be >= 1"),
    "max_completion_tokens": Field("integer", None, lambda v: v >= 1, "must be >= 1"),
    "temperature": Field("number", None, lambda v: v >= 0, "must be >= 0"),
    "top_p": Field("number", None, lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "entropix": Field("object", {}),
    "sampler": Field("string", "entropix"),
    "seed": Field("integer"),
    "trace": Field("boolean", False),
}
# Chat's `logprobs` is a switch and `top_logprobs` the count; the completions API's is the count.
CHAT_FIELDS = {
    **FIELDS,
    "logprobs": Field("boolean", False),
    "top_logprobs": Field("integer", **in_range(0, MAX_TOP_LOGPROBS)),
}
COMPLETION_FIELDS = {**FIELDS, "logprobs": Field("integer", **in_range(0, MAX_COMPLETION_LOGPROBS))}


def read_fields(body: dict, fields: Dict[str, Field]) -> Dict[str, Any]:
    """The value of each of `fields` in `body`, checked against its type and rule."""
    values = {}
    for name, spec in fields.items():
        value = values[name] = get_field(body, name, spec.type, spec.default)
        if value is not None and not spec.ok(value):
            raise APIError(
                422, f"'{name}' {spec.rule}, got {value!r}", param=name, code="invalid_value"
            )
    return values


def options(fields: Dict[str, Any], model: str) -> RequestOptions:
    include_usage = get_field(fields["stream_options"], "include_usage", "boolean", False)
    return RequestOptions(fields["stream"], include_usage, model)


def parse_model(body: dict, served: str) -> str:
    name = get_field(body, "model", "string", served)
    if name not in (served, *MODEL_ALIASES):
        raise APIError(
            404,
            f"the model {name!r} is not served here; use {served!r} (see GET /v1/models)",
            param="model",
            code="model_not_found",
        )
    return served


def parse_stop(body: dict) -> Tuple[str, ...]:
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop
    if stops is not None and not (
        isinstance(stops, list) and all(isinstance(s, str) for s in stops)
    ):
        raise APIError(
            400, "'stop' must be a string or a list of strings", param="stop", code="invalid_type"
        )
    if stops is not None and not all(stops):
        raise APIError(422, "'stop' strings must not be empty", param="stop", code="invalid_value")
    if stops is not None and len(stops) > MAX_STOP_STRINGS:
        raise APIError(
            422,
            f"'stop' holds {len(stops)} strings; send at most {MAX_STOP_STRINGS}",
            param="stop",
            code="invalid_value",
        )
    return tuple(stops or ())


# The OpenAI fields that set a SamplerConfig setting: setting -> field.
SETTING_FIELDS = {"temp": "temperature", "top_p": "top_p"}


def setting_fields(fields: Dict[str, Any]) -> Dict[str, str]:
    """The settings that come from an OpenAI field (given, and not overridden in `entropix`)."""
    return {
        setting: field
        for setting, field in SETTING_FIELDS.items()
        if fields[field] is not None and setting not in fields["entropix"]
    }


def parse_sampler_config(fields: Dict[str, Any], info: ModelInfo) -> SamplerConfig:
    """The model's preset, then `temperature` / `top_p`, then the `entropix` overrides."""
    aliases = {setting: fields[field] for setting, field in setting_fields(fields).items()}
    config = info.sampler_config(**{**aliases, **fields["entropix"]})
    if config.branch_k:
        raise APIError(
            400,
            "look-ahead branching (branch_k > 0) is not served yet; use `entropix-mlx "
            "generate` or the Python API for it",
            param="entropix",
            code="invalid_value",
        )
    return config


def chat_top_logprobs(fields: Dict[str, Any]) -> Optional[int]:
    """Chat's `logprobs` (bool) and `top_logprobs`: None, or how many alternatives."""
    if fields["top_logprobs"] is not None and not fields["logprobs"]:
        raise APIError(
            400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs", code="invalid_value"
        )
    return (fields["top_logprobs"] or 0) if fields["logprobs"] else None


def parse_messages(body: dict) -> List[Dict[str, str]]:
    """The chat messages as {"role", "content"} with text content; 400 on anything else."""
    messages = get_field(body, "messages", "array")
    if not messages:
        raise APIError(
            400,
            "'messages' must be a non-empty list of {role, content} objects",
            param="messages",
            code="invalid_value",
        )
    return [_parse_message(i, m) for i, m in enumerate(messages)]


def _parse_message(index: int, message: Any) -> Dict[str, str]:
    param = f"messages[{index}]"
    if not isinstance(message, dict):
        raise APIError(
            400,
            f"{param} must be an object with 'role' and 'content'",
            param=param,
            code="invalid_type",
        )
    role = message.get("role")
    if role not in CHAT_ROLES:
        raise APIError(
            400,
            f"{param}.role must be one of {', '.join(CHAT_ROLES)}, got {role!r}",
            param=f"{param}.role",
            code="invalid_value",
        )
    return {
        "role": CHAT_ROLES[role],
        "content": _message_text(message.get("content"), f"{param}.content"),
    }


def _message_text(content: Any, param: str) -> str:
    """Text content: a string, or a list of {"type": "text", "text": ...} parts (joined)."""
    if isinstance(content, str):
        return check_unicode(content, param)
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in content
    ):
        return check_unicode("".join(p["text"] for p in content), param)
    raise APIError(
        400,
        f"{param} must be a string or a list of text parts (this model reads text only)",
        param=param,
        code="invalid_type",
    )


def parse_prompt(body: dict, vocab_size: int) -> Union[str, List[int]]:
    """The completion prompt: a string, a one-string list, or a list of token ids."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return check_unicode(prompt, "prompt")
    if isinstance(prompt, list) and prompt and all(JSON_TYPES["integer"](t) for t in prompt):
        if not all(0 <= t < vocab_size for t in prompt):
            raise APIError(
                400,
                f"'prompt' token ids must be in [0, {vocab_size})",
                param="prompt",
                code="invalid_value",
            )
        return prompt
    raise APIError(
        400,
        "'prompt' must be a non-empty string or a list of token ids (one prompt per request)",
        param="prompt",
        code="invalid_type",
    )


def check_unicode(text: str, param: str) -> str:
    """`text` if it is valid Unicode (JSON escapes can smuggle in lone surrogates, which tokenizers refuse)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise APIError(
            400,
            f"{param} holds an unpaired surrogate escape at character {e.start}; send valid Unicode",
            param=param,
            code="invalid_value",
        ) from None
    return text


# --- Responses -------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """What differs between chat and text completions in the response shape."""

    id_prefix: str
    object: str
    chunk_object: str
    chat: bool

    def choice(
        self,
        index: int,
        text: str,
        finish_reason: Optional[str],
        trace: Optional[List[dict]],
        stream: bool,
        logprobs: Optional[dict] = None,
        first: bool = False,
    ) -> dict:
        if not self.chat:
            content = {"text": text}
        elif stream:
            delta = (
                {"role": "assistant", "content": text}
                if first
                else ({"content": text} if text else {})
            )
            content = {"delta": delta}
        else:
            content = {"message": {"role": "assistant", "content": text}}
        choice = {"index": index, **content, "logprobs": logprobs, "finish_reason": finish_reason}
        if trace is not None:
            choice["entropix_trace"] = trace
        return choice

    def logprobs(self, tokenizer, entries: List[TokenLogprob], text_offset: int = 0) -> dict:
        """OpenAI's logprobs object of these tokens: chat's `content` list, or the completions
        API's parallel lists. Token text is each token decoded alone."""
        texts = [tokenizer.decode([e.token]) for e in entries]
        if self.chat:

            def item(text, logprob):
                return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

            content = [
                {
                    **item(text, e.logprob),
                    "top_logprobs": [item(tokenizer.decode([t]), lp) for t, lp in e.top],
                }
                for text, e in zip(texts, entries)
            ]
            return {"content": content, "refusal": None}
        offsets = [text_offset + sum(len(t) for t in texts[:i]) for i in range(len(texts))]
        top = [{tokenizer.decode([t]): lp for t, lp in e.top} for e in entries]
        return {
            "tokens": texts,
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": top,
            "text_offset": offsets,
        }


CHAT = Endpoint("chatcmpl-", "chat.completion", "chat.completion.chunk", chat=True)
COMPLETION = Endpoint("cmpl-", "text_completion", "text_completion", chat=False)


def usage(finishes: List[Finish]) -> dict:
    """Token counts of a whole request: its prompt once, every choice's completion."""
    prompt, cached = finishes[0].prompt_tokens, finishes[0].cached_tokens
    completion = sum(f.completion_tokens for f in finishes)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def envelope(endpoint: Endpoint, id: str, model: str, created: int, stream: bool, **fields) -> dict:
    object_name = endpoint.chunk_object if stream else endpoint.object
    return {"id": id, "object": object_name, "created": created, "model": model, **fields}


def sse(payload: Union[dict, str]) -> str:
    """One server-sent event: `data: <json>` (or a literal such as [DONE]) and a blank line."""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


@dataclass
class ChoiceText:
    """One choice's answer as it comes in, for a non-streaming response."""

    text: List[str] = field(default_factory=list)
    trace: List[dict] = field(default_factory=list)
    logprobs: List[TokenLogprob] = field(default_factory=list)
    finish: Optional[Finish] = None


async def complete(
    job: Job, request: Request, endpoint: Endpoint, options: RequestOptions, tokenizer
) -> JSONResponse:
    """Wait for the whole answer (cancelling it if the client goes away) and return it."""
    watcher = asyncio.create_task(cancel_on_disconnect(request, job))
    choices = [ChoiceText() for _ in range(job.request.n)]
    try:
        async for event in job.stream():
            if isinstance(event, Failure):
                return error_response(
                    APIError(
                        event.status, event.message, type="server_error", code="generation_failed"
                    )
                )
            choice = choices[event.index]
            if isinstance(event, Delta):
                choice.text.append(event.text)
                choice.trace.extend(event.trace)
                choice.logprobs.extend(event.logprobs)
            else:
                choice.finish = event
    finally:
        watcher.cancel()
        job.cancelled.set()
    wanted = job.request
    body = [
        endpoint.choice(
            i,
            "".join(c.text),
            c.finish.reason,
            c.trace if wanted.trace else None,
            stream=False,
            logprobs=endpoint.logprobs(tokenizer, c.logprobs)
            if wanted.top_logprobs is not None
            else None,
        )
        for i, c in enumerate(choices)
    ]
    return JSONResponse(
        envelope(
            endpoint,
            new_id(endpoint),
            options.model,
            int(time.time()),
            False,
            choices=body,
            usage=usage([c.finish for c in choices]),
        )
    )


async def cancel_on_disconnect(request: Request, job: Job):
    while (await request.receive())["type"] != "http.disconnect":
        pass
    job.cancelled.set()


async def event_stream(
    job: Job, endpoint: Endpoint, options: RequestOptions, tokenizer
) -> AsyncIterator[str]:
    """The answer as OpenAI chunks; closing the stream (client gone) cancels the generation."""
    id, created, wanted = new_id(endpoint), int(time.time()), job.request
    chunk = lambda **fields: sse(envelope(endpoint, id, options.model, created, True, **fields))  # noqa: E731
    finishes, offsets = [], [0] * wanted.n
    try:
        if endpoint.chat:
            for i in range(wanted.n):
                yield chunk(choices=[endpoint.choice(i, "", None, None, stream=True, first=True)])
        async for event in job.stream(heartbeat=HEARTBEAT_SECONDS):
            if event is None:  # also finds a client that left, whose socket refuses the bytes
                yield ": keep-alive\n\n"
            elif isinstance(event, Failure):
                yield sse(
                    APIError(
                        event.status, event.message, type="server_error", code="generation_failed"
                    ).body()
                )
            elif isinstance(event, Delta) and (event.text or wanted.trace or event.logprobs):
                logprobs = (
                    endpoint.logprobs(tokenizer, event.logprobs, offsets[event.index])
                    if event.logprobs
                    else None
                )
                offsets[event.index] += len(event.text)
                trace = event.trace if wanted.trace else None
                yield chunk(
                    choices=[endpoint.choice(event.index, event.text, None, trace, True, logprobs)]
                )
            elif isinstance(event, Finish):
                finishes.append(event)
                trace = [] if wanted.trace else None
                yield chunk(
                    choices=[endpoint.choice(event.index, "", event.reason, trace, stream=True)]
                )
        if options.include_usage and len(finishes) == wanted.n:
            yield chunk(choices=[], usage=usage(finishes))
        yield sse("[DONE]")
    finally:
        job.cancelled.set()


def new_id(endpoint: Endpoint) -> str:
    return endpoint.id_prefix + uuid.uuid4().hex[:24]


# --- The application -------------------------------------------------------------------


class ModelServer:
    """The loaded model, its limits and its worker, and the route handlers over them."""

    def __init__(
        self,
        model,
        tokenizer,
        info,
        max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        max_queue: int = DEFAULT_MAX_QUEUE,
        prompt_cache_bytes: int = DEFAULT_PROMPT_CACHE_BYTES,
        body_timeout: float = BODY_TIMEOUT_SECONDS,
        api_key: Optional[str] = None,
        prefill_step_size: Optional[int] = None,
    ):
        self.model, self.tokenizer, self.info = model, tokenizer, info
        self.name = str(info.name)
        self.vocab_size = info.args.vocab_size
        self.max_tokens_limit, self.max_body_bytes = max_tokens_limit, max_body_bytes
        self.body_timeout, self.api_key = body_timeout, api_key
        rows = max_concurrency
        choices = Field(
            "integer",
            1,
            lambda v: 1 <= v <= rows,
            f"must be in [1, {rows}] (choices are rows of one batch)",
        )
        self.chat_fields = {**CHAT_FIELDS, "n": choices}
        self.completion_fields = {**COMPLETION_FIELDS, "n": choices}
        self.worker = GenerationWorker(
            model, tokenizer, max_concurrency, max_queue, prompt_cache_bytes, prefill_step_size
        )
        self.created = int(time.time())

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "model": self.name})

    async def models(self, request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [self.model_card()]})

    async def model_by_id(self, request: Request) -> JSONResponse:
        parse_model({"model": request.path_params["id"]}, self.name)
        return JSONResponse(self.model_card())

    def model_card(self) -> dict:
        return {
            "id": self.name,
            "object": "model",
            "created": self.created,
            "owned_by": "entropix-mlx",
            "context_length": self.info.context_length,
        }

    async def chat_completions(self, request: Request):
        body = await self.read_body(request)
        model, messages = parse_model(body, self.name), parse_messages(body)
        fields = read_fields(body, self.chat_fields)
        settings = self.generation_settings(body, fields, chat_top_logprobs(fields))
        prompt_ids = await run_in_threadpool(self._encode_chat, messages)
        answer = options(fields, model)
        settings["continues_prompt"] = False  # an answer is a text of its own
        return await self._answer(request, prompt_ids, "messages", settings, CHAT, answer)

    async def completions(self, request: Request):
        body = await self.read_body(request)
        model, prompt = parse_model(body, self.name), parse_prompt(body, self.vocab_size)
        fields = read_fields(body, self.completion_fields)
        settings = self.generation_settings(body, fields, fields["logprobs"])
        prompt_ids = (
            prompt
            if isinstance(prompt, list)
            else await run_in_threadpool(self._encode_text, prompt)
        )
        answer = options(fields, model)
        settings["continues_prompt"] = True  # clients append the text to the prompt
        return await self._answer(request, prompt_ids, "prompt", settings, COMPLETION, answer)

    async def read_body(self, request: Request) -> dict:
        return await read_json_body(request, self.max_body_bytes, self.body_timeout)

    def generation_settings(
        self, body: dict, fields: Dict[str, Any], top_logprobs: Optional[int]
    ) -> dict:
        """GenerationRequest's arguments but the prompt: checked `fields`, `stop` of `body`."""
        with library_checks("prompt", setting_fields(fields)):
            config = parse_sampler_config(fields, self.info)
            self.worker.scheduler.sampler(fields["sampler"], config)  # built once, shared
            seed = row_seeds(fields["seed"], fields["n"])[0]
        limit = self.max_tokens_limit
        max_tokens = min(fields["max_tokens"] or fields["max_completion_tokens"] or limit, limit)
        return dict(
            sampler=fields["sampler"],
            config=config,
            max_tokens=max_tokens,
            seed=seed,
            stop=parse_stop(body),
            trace=fields["trace"],
            n=fields["n"],
            top_logprobs=top_logprobs,
        )

    def _encode_chat(self, messages) -> List[int]:
        try:
            return chat_prompt_ids(self.tokenizer, messages)
        except Exception as e:  # the model's own Jinja template decides what it accepts
            raise APIError(
                400,
                f"the model's chat template rejected the messages: {e}",
                param="messages",
                code="invalid_value",
            ) from None

    def _encode_text(self, text: str) -> List[int]:
        return literal_prompt_ids(self.tokenizer, text)

    async def _answer(self, request, prompt_ids, prompt_param, settings, endpoint, options):
        generation = self.fit_to_context(prompt_ids, prompt_param, settings)
        try:
            with library_checks(prompt_param):
                job = self.worker.submit(generation)
        except Busy as e:
            raise APIError(
                429,
                str(e),
                code="rate_limit_exceeded",
                type="rate_limit_error",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            ) from None
        if options.stream:
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return StreamingResponse(
                event_stream(job, endpoint, options, self.tokenizer),
                media_type="text/event-stream",
                headers=headers,
            )
        return await complete(job, request, endpoint, options, self.tokenizer)

    def fit_to_context(
        self, prompt_ids: List[int], prompt_param: str, settings: dict
    ) -> GenerationRequest:
        """The request for an encoded prompt that fits the context window, max_tokens cut to the
        room left."""
        with library_checks(prompt_param):
            max_tokens = fit_prompt(prompt_ids, self.info.context_length, settings["max_tokens"])
        return GenerationRequest(prompt_ids=prompt_ids, **{**settings, "max_tokens": max_tokens})

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        self.worker.start()
        try:
            yield
        finally:
            await run_in_threadpool(self.worker.stop)

    def routes(self) -> List[Route]:
        return [
            Route("/health", self.health, methods=["GET"]),
            Route("/v1/models", self.authorized(self.models), methods=["GET"]),
            Route("/v1/models/{id:path}", self.authorized(self.model_by_id), methods=["GET"]),
            Route("/v1/chat/completions", self.authorized(self.chat_completions), methods=["POST"]),
            Route("/v1/completions", self.authorized(self.completions), methods=["POST"]),
        ]

    def authorized(self, handler: Callable) -> Callable:
        """`handler`, answering 401 first unless the request carries the server's API key (if
        it has one) as `Authorization: Bearer <key>`."""

        @functools.wraps(handler)
        async def route(request: Request):
            if self.api_key is not None:
                check_api_key(request.headers.get("authorization"), self.api_key)
            return await handler(request)

        return route


def check_api_key(authorization: Optional[str], key: str):
    """401 unless `authorization` is `Bearer <key>` (compared in constant time)."""
    scheme, _, given = (authorization or "").strip().partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), key.encode()):
        return
    message = (
        "the API key is wrong; send the key the server was started with"
        if authorization
        else "this server needs an API key; send it as Authorization: Bearer <key>"
    )
    raise APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def create_app(model, tokenizer, info, **limits) -> Starlette:
    """The ASGI app serving one loaded model (`load()`'s triple); the worker runs in its lifespan.
    `limits`: ModelServer's max_tokens_limit, max_body_bytes, max_concurrency, max_queue,
    prompt_cache_bytes, body_timeout, api_key and prefill_step_size."""
    server = ModelServer(model, tokenizer, info, **limits)
    handlers = {
        APIError: on_api_error,
        HTTPException: on_http_error,
        Exception: on_unexpected_error,
    }
    return Starlette(routes=server.routes(), exception_handlers=handlers, lifespan=server.lifespan)


def check_can_listen(host: str, port: int):
    """Raise OSError if `host:port` cannot be bound (in use, or no such address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


def is_loopback(host: str) -> bool:
    """Whether `host` is an address of this machine only (127.0.0.1, ::1, localhost)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() == "localhost"


# --- Connections ---------------------------------------------------------------------


class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with the bounds it lacks. A connection beyond
    `max_connections` is closed at once, so idle sockets cannot use up the file descriptors. A
    connection with no request under way is closed after `timeout_keep_alive` seconds, from its
    start as after a response, however slowly its bytes come (uvicorn times out only the wait
    after a response, and restarts it at every byte). A client that half-closes after sending
    its request still gets the answer (uvicorn would drop it), while one that left is found by
    the reset its socket answers our next bytes with."""

    warned = 0.0  # when a refused connection was last logged

    def __init__(self, *args, max_connections: int = MAX_CONNECTIONS, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_connections = max_connections
        self.idle_timer: Optional[asyncio.TimerHandle] = None
        self.peer_timer: Optional[asyncio.TimerHandle] = None

    def connection_made(self, transport):
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            if time.monotonic() - GuardedH11Protocol.warned > 60:
                GuardedH11Protocol.warned = time.monotonic()
                log.warning("%d connections are open: refusing more", self.max_connections)
            transport.close()
            return
        self._wait_for_request()

    def data_received(self, data: bytes):
        super().data_received(data)
        if self._request_under_way():
            self._stop_waiting()

    def on_response_complete(self):
        super().on_response_complete()
        if not self.transport.is_closing() and not self._request_under_way():
            self._wait_for_request()

    def eof_received(self):
        """The client sent its last byte: it half-closed and waits for the answer, or it left.
        Keep the connection open to answer (and close it after), and tell the two apart by
        what its socket does with our next bytes: a 100 Continue if the answer has not begun
        (HTTP/1.1 clients skip it), else the answer's own."""
        whole_request = self.conn.their_state in (h11.DONE, h11.MUST_CLOSE)
        if not (self._request_under_way() and whole_request):
            return None  # uvicorn's way: close
        self.cycle.keep_alive = False
        if not self.cycle.response_started and self.scope["http_version"] != "1.0":
            self.transport.write(
                self.conn.send(
                    h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
                )
            )
        self._check_peer()
        return True

    def connection_lost(self, exc):
        self._stop_waiting()
        if self.peer_timer is not None:
            self.peer_timer.cancel()
        super().connection_lost(exc)

    def _check_peer(self):
        """Drop the connection once the client's socket has reset it (it is gone)."""
        if self.transport.is_closing() or not self._request_under_way():
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self.transport.abort()  # the app hears http.disconnect and cancels the generation
            return
        self.peer_timer = self.loop.call_later(PEER_CHECK_SECONDS, self._check_peer)

    def _request_under_way(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _wait_for_request(self):
        self._stop_waiting()
        self.idle_timer = self.loop.call_later(self.timeout_keep_alive, self._close_idle)

    def _stop_waiting(self):
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None

    def _close_idle(self):
        if not self._request_under_way():
            self.transport.close()


def connection_limit(wanted: int = MAX_CONNECTIONS) -> int:
    """`wanted`, but at most half the process's file descriptors."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return wanted if soft == resource.RLIM_INFINITY else max(1, min(wanted, soft // 2))


def uvicorn_config(
    app: Starlette,
    host: str = "127.0.0.1",
    port: int = 8080,
    log_level: str = "info",
    max_connections: int = MAX_CONNECTIONS,
    idle_timeout: float = IDLE_TIMEOUT_SECONDS,
) -> uvicorn.Config:
    """How uvicorn serves `app`: HTTP/1.1 through `GuardedH11Protocol`."""
    protocol = functools.partial(
        GuardedH11Protocol, max_connections=connection_limit(max_connections)
    )
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        http=protocol,
        backlog=BACKLOG,
        timeout_keep_alive=idle_timeout,
        timeout_graceful_shutdown=3,
    )


def run(app: Starlette, host: str = "127.0.0.1", port: int = 8080, log_level: str = "info"):
    """Serve `app` with uvicorn until interrupted."""
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the Ctrl-C it handled
        uvicorn.Server(uvicorn_config(app, host, port, log_level)).run()
