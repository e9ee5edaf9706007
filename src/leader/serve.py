"""The HTTP service: a trained LEADER student behind FastAPI, with a small web page.

LEADER (Liu et al., arXiv 2402.02803) distils an LLM into a small student so that
recommending is fast enough to serve; this module serves it.

Endpoints: ``POST /v1/recommend`` (one patient, or ``{"patients": [...]}``),
``GET /v1/health``, ``GET /v1/model``, ``GET /v1/codes`` (search codes by code or name),
the page at ``/`` and the OpenAPI docs at ``/docs``.

Hardening: every request body is read by :class:`Guard` before any parsing and refused
with 413 beyond ``max_body`` bytes (declared or chunked); an optional bearer token guards
``/v1/*`` except health (401); bad input gets 422 naming the patient and the JSON path;
one JSON access-log line per request. The model is loaded once; concurrent requests are
batched into one ``predict_proba`` call when ``batching`` is on. Nothing is written to
disk and nothing is unpickled.

>>> app = create_app(run_dir="runs/student", config=ServeConfig(token="s3cret"))  # doctest: +SKIP
>>> uvicorn.run(app, host="127.0.0.1", port=8000)                               # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from leader import __version__
from leader.recommend import (
    DEFAULT_TOP,
    MAX_BATCH,
    InputProblem,
    InvalidInput,
    Predictor,
    Prepared,
    Recommender,
    batch_schema,
    inline_refs,
    load_model,
    patient_schema,
    run_metrics,
)
from leader.safety import DEFAULT_MARGIN

ACCESS_LOG = logging.getLogger("leader.access")
ERROR_LOG = logging.getLogger("leader.serve")
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass
class ServeConfig:
    token: str | None = None  # bearer token required on /v1/* except health (None: open)
    max_body: int = 1_000_000  # largest request body in bytes; larger gets 413
    max_batch: int = MAX_BATCH  # most patients in one request
    batching: bool = True  # batch concurrent requests into one model call
    max_model_batch: int = 256  # most patients in one model call when batching
    access_log: bool = True  # one JSON line per request on the "leader.access" logger
    margin: float = DEFAULT_MARGIN  # ddi_safe: both drugs of a pair stay from this head-room


# ----------------------------------------------------------------------------- responses
def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Response(body, status_code=status, media_type="application/json", headers=headers)


async def _send_plain(
    send: Send, status: int, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    await _send_json(send, status, json.dumps({"detail": message}).encode(), headers)


async def _send_json(
    send: Send, status: int, body: bytes, headers: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# ----------------------------------------------------------------------------- guard
class Guard:
    """Pure ASGI middleware: body limit (before parsing), bearer token, access log."""

    def __init__(
        self, app: ASGIApp, config: ServeConfig, service: RecommendService | None = None
    ) -> None:
        self.app = app
        self.config = config
        self.service = service  # answers POST /v1/recommend without the framework's routing
        self.expected = f"Bearer {config.token}".encode() if config.token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def logged_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._handle(scope, receive, logged_send)
        finally:
            if self.config.access_log:
                ACCESS_LOG.info(
                    json.dumps(
                        {
                            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            "method": scope["method"],
                            "path": scope["path"],
                            "status": status,
                            "ms": round((time.perf_counter() - start) * 1000, 2),
                        }
                    )
                )

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if self.expected and path.startswith("/v1/") and path != "/v1/health":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                await _send_plain(
                    send,
                    401,
                    "missing or wrong bearer token (send 'Authorization: Bearer TOKEN')",
                    ((b"www-authenticate", b"Bearer"),),
                )
                return
        if scope["method"] in ("POST", "PUT", "PATCH"):
            body = await self._read_body(scope, receive, send)
            if body is None:
                return
            if self.service is not None and path == "/v1/recommend":
                # The hot path: same handler as the documented FastAPI route, minus routing
                # and parameter injection (about a third of the per-request CPU).
                try:
                    status, payload = await self.service.handle(body, scope["query_string"])
                except Exception:  # a bug, not bad input: log it, answer a plain 500
                    ERROR_LOG.exception("POST /v1/recommend failed")
                    await _send_plain(send, 500, "internal error; see the server log")
                    return
                await _send_json(send, status, payload)
                return
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if replayed:  # the app asks again only to wait for a disconnect
                    return await receive()
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}

            await self.app(scope, replay, send)
            return
        await self.app(scope, receive, send)

    async def _read_body(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        limit = self.config.max_body
        declared = dict(scope["headers"]).get(b"content-length")
        too_big = f"request body over {limit} bytes; send fewer patients per request"
        if declared is not None:
            try:
                if int(declared) > limit:
                    await _send_plain(send, 413, too_big)
                    return None
            except ValueError:
                await _send_plain(send, 400, "bad Content-Length header")
                return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:  # chunked (or lying) bodies are cut off while streaming
                await _send_plain(send, 413, too_big)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


# ----------------------------------------------------------------------------- batching
class Batcher:
    """Runs the model on one worker thread; requests arriving while it is busy are pooled
    into the next call (no added wait: an idle worker starts at once)."""

    def __init__(self, recommender: Recommender, max_model_batch: int) -> None:
        self.recommender = recommender
        self.max_model_batch = max_model_batch
        self.pending: list[tuple[list[Prepared], asyncio.Future[np.ndarray]]] = []
        self.executor: ThreadPoolExecutor | None = None  # started on first use
        self.busy = False
        self.task: asyncio.Task[None] | None = None
        self.calls = 0  # model calls made (for tests and tuning)

    async def predict(self, prepared: list[Prepared]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self.pending.append((prepared, future))
        if not self.busy:
            self.busy = True
            self.task = loop.create_task(self._drain())  # keep a reference: tasks are weak
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.pending:
                batch: list[tuple[list[Prepared], asyncio.Future[np.ndarray]]] = []
                size = 0
                while self.pending and (not batch or size < self.max_model_batch):
                    item = self.pending.pop(0)
                    batch.append(item)
                    size += len(item[0])
                flat = [p for prepared, _ in batch for p in prepared]
                if self.executor is None:
                    self.executor = ThreadPoolExecutor(1, thread_name_prefix="leader-model")
                self.calls += 1
                try:
                    prob = await loop.run_in_executor(self.executor, self.recommender.predict, flat)
                except Exception as exc:  # noqa: BLE001 - handed to every waiting request
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                row = 0
                for prepared, future in batch:
                    if not future.done():
                        future.set_result(prob[row : row + len(prepared)])
                    row += len(prepared)
        finally:
            self.busy = False

    def close(self) -> None:
        """Stop the model thread (a later request starts a new one)."""
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None


# ----------------------------------------------------------------------------- recommend
TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"0", "false", "no", "off"})
MAX_TOP = 10_000


class RecommendService:
    """``POST /v1/recommend``: raw body and query string in, (status, JSON bytes) out."""

    def __init__(self, recommender: Recommender, batcher: Batcher | None, max_batch: int):
        self.recommender = recommender
        self.batcher = batcher
        self.max_batch = max_batch

    async def handle(self, body: bytes, query: bytes) -> tuple[int, bytes]:
        options = parse_query(query)
        if isinstance(options, str):
            return 422, _dumps({"detail": [{"path": "query", "message": options}]})
        ddi_safe, top, strict = options
        try:
            document = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _problems([InputProblem(0, "$", f"not valid JSON: {exc}")], False)
        batch = isinstance(document, dict) and "patients" in document and "visits" not in document
        if batch:
            problem = _batch_problem(document, self.max_batch)
            if problem:
                return _problems([problem], False)
            records = document["patients"]
        else:
            records = [document]
        try:
            prepared = self.recommender.prepare_all(records, strict)
        except InvalidInput as exc:
            return _problems(exc.problems, batch)
        if self.batcher is not None:
            prob = await self.batcher.predict(prepared)
        else:
            prob = self.recommender.predict(prepared)
        results = self.recommender.results(prepared, prob, ddi_safe, top)
        return 200, _dumps({"results": results} if batch else results[0])


def parse_query(query: bytes) -> tuple[bool, int, bool] | str:
    """``ddi_safe``, ``top``, ``strict`` from a query string, or the problem with it."""
    values = dict(parse_qsl(query.decode("latin-1"), keep_blank_values=True))
    flags = []
    for name in ("ddi_safe", "strict"):
        text = values.get(name, "false").lower()
        if text not in TRUE and text not in FALSE:
            return f"{name}={values[name]!r}: use true or false"
        flags.append(text in TRUE)
    try:
        top = int(values.get("top", DEFAULT_TOP))
    except ValueError:
        return f"top={values['top']!r}: not an integer"
    if not 0 <= top <= MAX_TOP:
        return f"top={top}: must be between 0 and {MAX_TOP}"
    return flags[0], top, flags[1]


def _dumps(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _problems(problems: list[InputProblem], batch: bool) -> tuple[int, bytes]:
    detail = [
        {
            "patient": p.patient,
            "path": p.path.replace("$", f"$.patients[{p.patient}]", 1) if batch else p.path,
            "message": p.message,
        }
        for p in problems
    ]
    return 422, _dumps({"detail": detail})


# ----------------------------------------------------------------------------- app
def create_app(
    run_dir: str | os.PathLike[str] | None = None,
    config: ServeConfig | None = None,
    model: Predictor | None = None,
) -> ASGIApp:
    """The ASGI app serving the run in ``run_dir`` (or an already loaded ``model``)."""
    config = config or ServeConfig()
    if model is None:
        if run_dir is None:
            raise ValueError("give run_dir or model")
        model = load_model(run_dir)
    metrics = run_metrics(run_dir) if run_dir is not None else {}
    metrics.pop("history", None)  # per-epoch log: long, and in the run folder anyway
    recommender = Recommender(model, margin=config.margin)
    batcher = Batcher(recommender, config.max_model_batch) if config.batching else None
    service = RecommendService(recommender, batcher, config.max_batch)
    codes = _CodeIndex(model)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if batcher is not None:
            batcher.close()

    api = FastAPI(
        lifespan=lifespan,
        docs_url=None,  # the default docs load Swagger UI from a CDN; ours work offline
        redoc_url=None,
        title="LEADER medication recommendation",
        version=__version__,
        description="Research tool, not medical advice. Recommends a visit's medication set "
        "(ATC-3) from its diagnosis and procedure codes with a distilled LEADER student.",
    )
    api.state.recommender = recommender
    api.state.batcher = batcher
    model_info = {
        "version": __version__,
        "run": Path(run_dir).name if run_dir is not None else None,
        "threshold": recommender.threshold,
        "vocabulary": {kind: len(model.vocab.codes[kind]) for kind in model.vocab.codes},
        "profile_fields": list(getattr(getattr(model, "profile_vocab", None), "fields", [])),
        "ddi": {"source": model.ddi_source, "pairs": len(model.ddi_pairs)},
        "ddi_safe_margin": config.margin,
        "metrics": metrics,
    }
    single = inline_refs(patient_schema())
    request_schema = {"oneOf": [single, batch_schema(config.max_batch)]}

    @api.get("/v1/health", tags=["service"])
    def health() -> dict[str, str]:
        """Liveness: 200 once the model is loaded."""
        return {"status": "ok"}

    @api.get("/v1/model", tags=["service"])
    def model_endpoint() -> Response:
        """Version, vocabulary sizes, threshold, DDI source and the run's metrics."""
        return json_response(model_info)

    @api.get("/v1/codes", tags=["codes"])
    def search_codes(
        kind: str = Query("diagnosis", pattern="^(diagnosis|procedure|medication)$"),
        q: str = Query("", max_length=100, description="code prefix or words of the name"),
        limit: int = Query(20, ge=1, le=200),
    ) -> Response:
        """Codes of one kind whose code starts with ``q`` or whose name contains it."""
        return json_response({"kind": kind, "codes": codes.search(kind, q, limit)})

    @api.post(
        "/v1/recommend",
        tags=["recommend"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": request_schema}},
            }
        },
    )
    async def recommend(
        request: Request,
        ddi_safe: bool = Query(False, description="thin interacting pairs (safety layer)"),
        top: int = Query(DEFAULT_TOP, ge=0, le=MAX_TOP, description="ranked drugs (0 = all)"),
        strict: bool = Query(False, description="unknown codes are an error (422)"),
    ) -> Response:
        """Recommend for one patient (answer: one result) or ``{"patients": [...]}``
        (answer: ``{"results": [...]}``). 422 names the patient and the JSON path."""
        # Served by Guard's fast path; kept here for the OpenAPI docs and for mounting
        # the FastAPI app on its own. Both run RecommendService.handle.
        status, payload = await service.handle(await request.body(), request.url.query.encode())
        return Response(payload, status_code=status, media_type="application/json")

    static = resources.files("leader").joinpath("static")
    page = static.joinpath("index.html").read_text("utf-8")

    docs = static.joinpath("docs.html").read_text("utf-8")

    @api.get("/", include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    @api.get("/docs", include_in_schema=False)
    def api_docs() -> HTMLResponse:
        return HTMLResponse(docs)

    api.mount("/static", StaticFiles(directory=str(static)), name="static")
    return Guard(api, config, service)


def _batch_problem(document: dict[str, Any], max_batch: int) -> InputProblem | None:
    extra = sorted(set(document) - {"patients"})
    if extra:
        return InputProblem(
            0, "$", f"unexpected field(s) {extra}; a batch is {{'patients': [...]}}"
        )
    patients = document["patients"]
    if not isinstance(patients, list) or not patients:
        return InputProblem(0, "$.patients", "must be a non-empty list of patients")
    if len(patients) > max_batch:
        return InputProblem(
            0, "$.patients", f"{len(patients)} patients; at most {max_batch} per request"
        )
    return None


class _CodeIndex:
    """Case-insensitive search over codes and names, for the page's autocomplete."""

    def __init__(self, model: Predictor) -> None:
        self.entries: dict[str, list[tuple[str, str, str]]] = {}
        for kind, codes in model.vocab.codes.items():
            rows = [(c, model.vocab.name(kind, c)) for c in codes]
            self.entries[kind] = [(c, n, f"{c} {n}".lower()) for c, n in rows]

    def search(self, kind: str, query: str, limit: int) -> list[dict[str, str]]:
        words = query.lower().split()
        prefix = query.strip().lower()
        starts: list[dict[str, str]] = []
        contains: list[dict[str, str]] = []
        for code, name, text in self.entries.get(kind, []):
            if prefix and code.lower().startswith(prefix):
                starts.append({"code": code, "name": name})
            elif all(w in text for w in words):
                contains.append({"code": code, "name": name})
            if len(starts) >= limit:
                break
        return (starts + contains)[:limit]
