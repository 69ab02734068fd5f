"""The server: a JSON API over a `Translator`, and the page that shows how it translates.

    GET  /           the page (static files shipped in this package: no build step, no CDN)
    POST /translate  {"text": ...} or {"texts": [...]}, optional beam_size, nbest, length_penalty
    POST /explain    {"text": ...} -> the JSON of transformer-explain's attention.json
    GET  /health     {"status": "ok", ...}
    GET  /info       model shape, vocabulary, checkpoint, decoding defaults, limits
    GET  /docs       a plain page of the endpoints, linking their OpenAPI schema /openapi.json

Every refusal is a 4xx with the JSON body {"error": "<field>: <what is wrong>", "field": ...};
an unexpected failure is a 500 with a one-line JSON error (the traceback goes to the log),
and the server goes on serving. `create_app` builds everything; nothing happens at import.
"""

from __future__ import annotations

import dataclasses
import difflib
import html
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from transformer.config import ConfigError, DecodingConfig
from transformer.decoding.translator import Translator
from transformer.errors import UserError
from transformer.explain.trace import explain
from transformer.serve.batcher import Batcher
from transformer.serve.continuous import ContinuousBatcher
from transformer.serve.schemas import (
    ErrorResponse,
    ExplainRequest,
    ExplainResponse,
    RequestError,
    TranslateRequest,
    TranslateResponse,
    explain_work,
    translate_response,
    translate_work,
)
from transformer.serve.settings import ServeSettings

if TYPE_CHECKING:
    from transformer.serve.ctranslate2_engine import CTranslate2Engine

logger = logging.getLogger(__name__)

T = TypeVar("T")

PACKAGE = "transformer.serve"
WALKTHROUGH = Path(__file__).resolve().parents[2] / "docs" / "walkthrough.md"
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in [
        (413, "too large: the body, the number of texts, or a text for the model"),
        (422, "a field with a wrong type or value, or an unknown field"),
    ]
}


def create_app(
    translator: Translator,
    settings: ServeSettings | None = None,
    engine: CTranslate2Engine | None = None,
) -> FastAPI:
    """The FastAPI application serving `translator` within `settings`' limits; /translate is
    decoded by `engine` when given (--engine ctranslate2), /explain always by `translator`."""
    settings = settings or ServeSettings()
    max_tokens = settings.max_batch_tokens or translator.config.decoding.batch_tokens
    defaults = dataclasses.replace(translator.config.decoding, batch_tokens=max_tokens)
    batcher: Batcher | ContinuousBatcher
    if settings.batching == "continuous":
        batcher = ContinuousBatcher(translator, max_tokens, settings.workers)
    else:
        batcher = Batcher(translator, max_tokens, settings.batch_window_ms / 1000, settings.workers)
    translating = engine or batcher

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        if engine is not None:
            await engine.start()
        try:
            yield
        finally:
            if engine is not None:
                await engine.stop()
            await batcher.stop()

    app = FastAPI(
        title="transformer-serve",
        description="Translate with a trained run of the `transformer` package, and see its "
        "attention. Errors are JSON: {error, field}.",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's Swagger UI and ReDoc load their scripts from a CDN: blank
        redoc_url=None,  # offline. /docs is our own page instead (`_docs_page`).
    )
    app.state.batcher = batcher
    _add_error_handlers(app)
    app.add_middleware(_BodyLimit, max_bytes=settings.max_request_bytes)
    page = resources.files(PACKAGE).joinpath("static", "index.html").read_text(encoding="utf-8")
    info = _info(translator, settings, defaults)
    info.update(engine.describe() if engine is not None else {})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.post("/translate", response_model=TranslateResponse, responses=_ERRORS)
    async def translate(request: TranslateRequest) -> TranslateResponse:
        """Translate one text or several; each gets its best translation and n-best list."""
        work = translate_work(request, translator, defaults, settings)
        results = await _model_work(translating.translate(work.lines, work.tokens, work.decoding))
        return translate_response(results)

    @app.post("/explain", response_model=ExplainResponse, responses=_ERRORS)
    async def explain_text(request: ExplainRequest) -> Response:
        """Translate one sentence and return its pieces and every attention weight."""
        decoding = explain_work(request, translator, defaults, settings)
        explanation = await _model_work(batcher.run(explain, translator, request.text, decoding))
        return _json(explanation.to_json())

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Whether the server answers, and how much it has batched so far."""
        stats = translating.stats
        return {
            "status": "ok",
            "queued": translating.queued,
            "batches": stats.groups,
            "sentences": stats.sentences,
            "largest_batch": stats.largest_group,
            "steps": getattr(batcher, "steps", None),  # continuous batching's decoding steps
        }

    @app.get("/info")
    async def model_info() -> dict[str, Any]:
        """The model's shape, its vocabulary, the checkpoint, decoding defaults and limits."""
        return info

    @app.get("/docs/walkthrough.md", include_in_schema=False)
    async def walkthrough() -> Response:
        """docs/walkthrough.md, which the page's legend links to, when the source tree has it."""
        if not WALKTHROUGH.is_file():
            message = "docs/walkthrough.md is not installed with the package; read it in the "
            raise RequestError("path", message + "project's repository", status=404)
        return PlainTextResponse(WALKTHROUGH.read_text(encoding="utf-8"))

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(_docs_page(app))

    app.mount("/static", StaticFiles(packages=[(PACKAGE, "static")]), name="static")
    return app


def _docs_page(app: FastAPI) -> str:
    """A page listing the endpoints and linking /openapi.json: nothing loaded from elsewhere."""
    items = []
    for route in app.routes:
        if isinstance(route, APIRoute) and route.include_in_schema:
            what = html.escape(route.description.split("\n")[0])  # the docstring's first line
            for method in sorted(route.methods):
                items.append(f"<li><code>{method} {html.escape(route.path)}</code> {what}</li>")
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(app.title)} API"
        f"</title></head><body><h1>{html.escape(app.title)} API</h1>"
        '<p>The API is described by its OpenAPI schema: <a href="/openapi.json">/openapi.json'
        "</a> (load it into any OpenAPI viewer). Errors are JSON: {error, field}.</p>"
        f"<ul>{''.join(items)}</ul></body></html>"
    )


async def _model_work(work: Awaitable[T]) -> T:
    """Await the model; its failure becomes a one-line 500 (the traceback goes to the log)."""
    try:
        return await work
    except UserError as error:  # e.g. a damaged checkpoint's NaN scores
        logger.error("the model failed: %s", error)
        raise RequestError("model", str(error), status=500) from None
    except Exception as error:
        logger.exception("the model failed")
        raise _internal_error(error) from None


def _internal_error(error: Exception) -> RequestError:
    """A bug's one-line answer: its type only (the traceback is in the server's log)."""
    message = f"internal error ({type(error).__name__}); the server's log has the details"
    return RequestError("server", message, status=500)


def _info(
    translator: Translator, settings: ServeSettings, defaults: DecodingConfig
) -> dict[str, Any]:
    """What GET /info answers: fixed for the life of the server."""
    config = translator.config
    weights = next(translator.model.parameters())
    return {
        "engine": "pytorch",  # what decodes /translate
        "explain_engine": "pytorch",  # what decodes /explain and draws the page's attention
        "checkpoint": settings.checkpoint,
        "device": str(translator.device),
        "dtype": str(weights.dtype).removeprefix("torch."),
        "model": {
            **dataclasses.asdict(config.model),
            "parameters": translator.model.num_parameters(),
        },
        "vocabulary": {
            "kind": config.tokenizer.kind,
            "joint": config.tokenizer.joint,
            "source": translator.tokenizers.src.vocab_size,
            "target": translator.tokenizers.tgt.vocab_size,
        },
        "max_source_tokens": translator.max_source_tokens,
        "decoding": dataclasses.asdict(defaults),
        "limits": {
            "max_texts": settings.max_texts,
            "max_request_bytes": settings.max_request_bytes,
            "max_beam_size": settings.max_beam_size,
            "max_batch_tokens": defaults.batch_tokens,
            "batching": settings.batching,
            "batch_window_ms": settings.batch_window_ms,
            "workers": settings.workers,
        },
    }


def _json(content: Any, status: int = 200) -> Response:
    """A JSON response written directly (large nested lists skip FastAPI's encoder)."""
    body = json.dumps(content, ensure_ascii=False, separators=(",", ":"))
    return Response(body, status_code=status, media_type="application/json")


def _error(field: str, message: str, status: int) -> Response:
    return _json({"error": f"{field}: {message}", "field": field}, status)


# --------------------------------------------------------------------------- errors

_REQUEST_FIELDS = {"/translate": TranslateRequest, "/explain": ExplainRequest}


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as {"error", "field"}; no traceback ever reaches a client."""

    @app.exception_handler(RequestError)
    async def refused(request: Request, error: RequestError) -> Response:
        return _error(error.field, error.message, error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> Response:
        problems = [_describe(problem, request.url.path) for problem in error.errors()]
        field = problems[0][0] if problems else "body"
        message = "; ".join(text if name == field else f"{name}: {text}" for name, text in problems)
        return _error(field, message or "invalid request", 422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> Response:
        if error.status_code == 404:
            return _error("path", f"no {request.url.path} here; see /docs for the API", 404)
        if error.status_code == 405:
            return _error("method", f"{request.method} is not allowed on {request.url.path}", 405)
        return _error("request", str(error.detail), error.status_code)

    @app.exception_handler(Exception)
    async def crashed(request: Request, error: Exception) -> Response:
        logger.exception("%s %s failed", request.method, request.url.path)
        failure = _internal_error(error)
        return _error(failure.field, failure.message, failure.status)


def _describe(problem: dict[str, Any], path: str) -> tuple[str, str]:
    """A pydantic problem as (field, message): `texts[2]`, "must be a string"."""
    location = [part for part in problem.get("loc", ()) if part != "body"]
    kind = problem.get("type", "")
    if kind == "json_invalid":
        detail = problem.get("ctx", {}).get("error", "cannot be parsed")
        return "body", f"malformed JSON ({detail})"
    field = "".join(
        f"[{part}]" if isinstance(part, int) else f".{part}" for part in location
    ).lstrip(".")
    if not field:
        if kind == "missing":
            return "body", 'missing; send a JSON object such as {"text": "how are you"}'
        return "body", 'must be a JSON object such as {"text": "how are you"}'
    if kind == "extra_forbidden":
        known = list(_REQUEST_FIELDS[path].model_fields) if path in _REQUEST_FIELDS else []
        close = difflib.get_close_matches(field, known, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        return field, f"unknown field; {hint}the fields are {', '.join(known)}"
    if kind == "missing":
        return field, "missing"
    if kind == "value_error":  # a schema's own check: its message, without pydantic's prefix
        error = problem.get("ctx", {}).get("error")
        if error is not None:
            return field, error.message if isinstance(error, ConfigError) else str(error)
    return field, _TYPE_MESSAGES.get(kind, problem.get("msg", "invalid"))


_TYPE_MESSAGES = {
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "list_type": "must be a list of strings",
}


# --------------------------------------------------------------------------- body size

_Scope = MutableMapping[str, Any]
_Message = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[_Message]]
_Send = Callable[[_Message], Awaitable[None]]


class _BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets 413 before anything parses it."""

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        body, more = b"", True
        while more:  # read it all now (bounded), then hand it on
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message], receive), send)
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await self._refuse(send)
                return
        request = {"type": "http.request", "body": body, "more_body": False}
        await self.app(scope, _replay([request], receive), send)

    async def _refuse(self, send: _Send) -> None:
        response = _error("body", f"larger than this server's limit of {self.max_bytes} bytes", 413)
        await response({"type": "http"}, _no_body, send)


def _replay(messages: list[_Message], receive: _Receive) -> _Receive:
    """A receive() that gives `messages` first, then waits on the real one."""
    pending = list(messages)

    async def replayed() -> _Message:
        return pending.pop(0) if pending else await receive()

    return replayed


async def _no_body() -> _Message:
    return {"type": "http.disconnect"}
