"""The HTTP service: a trained LEADER student behind FastAPI, with a small web page.

LEADER (Liu et al., arXiv 2402.02803) distils an LLM into a small student so that
recommending is fast enough to serve; this module serves it.

Endpoints: ``POST /v1/recommend`` (one patient, or ``{"patients": [...]}``),
``GET|HEAD /v1/health``, ``GET /v1/model``, ``GET /v1/codes`` (search codes by code or
name), the page at ``/`` and the OpenAPI docs at ``/docs``.

Hardening (issues 6 and 12), in the order a request meets it:

1. the connection: at most ``max_connections`` (beyond: 503 and close); a request head must
   arrive within ``head_timeout`` seconds (slow or idle clients are closed); keep-alive
   connections idle ``keep_alive`` seconds are closed (:func:`run`);
2. :class:`Guard`, before any parsing: without a token the ``Host`` header must name this
   server (DNS rebinding); the bearer token (scheme case-insensitive, ``compare_digest``)
   on ``/v1/*`` except health; a method the OpenAPI document does not list for the path
   is 405 with ``Allow`` (:mod:`leader.openapi`, which also documents every status an
   operation can answer); ``Content-Type: application/json`` on POST (415; a
   cross-site ``text/plain`` POST needs no preflight); the body read within
   ``body_timeout`` seconds (408) and ``max_body`` bytes (413, declared or chunked);
3. the body (:class:`RecommendService`): strict JSON (:func:`leader.recommend.loads`),
   at most ``max_batch`` patients, ``max_visits`` visits and ``max_codes`` codes per
   request (413), validation that stops at the first problems, unknown codes counted but
   listed only up to 20;
   bodies over ``INLINE_BODY`` bytes and answers over ``INLINE_PATIENTS`` patients are
   worked on a worker thread, so the event loop (and ``/v1/health``) stays responsive;
4. every error, from any layer, has one shape:
   ``{"detail": [{"path": ..., "message": ..., ["patient": i]}]}``, and never echoes the
   input beyond a short excerpt; a client that goes away is logged as 499, a bug as 500;
5. every response carries ``X-Content-Type-Options: nosniff``, ``Cache-Control:
   no-store`` (answers hold patient data), ``Cross-Origin-Resource-Policy: same-origin`` and
   a Content-Security-Policy; pages and their files add ``X-Frame-Options: DENY``,
   ``Referrer-Policy: no-referrer`` and a CSP allowing only their own scripts and styles.

The model is loaded once; concurrent requests are batched into one ``predict_proba`` call
when ``batching`` is on. Nothing is written to disk and nothing is unpickled.

>>> app = create_app(run_dir="runs/student", config=ServeConfig(token="s3cret"))  # doctest: +SKIP
>>> run(app, ServeConfig(token="s3cret"), host="127.0.0.1", port=8000)          # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import math
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from leader import __version__
from leader.cds_hooks import register as register_cds_hooks
from leader.config import Config, option
from leader.errors import LeaderError
from leader.explain import (
    DEFAULT_ITEMS,
    EXPLAIN_WORK,
    MAX_ITEMS,
    add_explanations,
    explain_work,
    model_profile_fields,
    parse_explain,
)
from leader.fhir import FhirInput, is_fhir, read_drug_map
from leader.openapi import allow_header, answer, ref
from leader.openapi import install as install_openapi
from leader.recommend import (
    DEFAULT_TOP,
    MAX_BATCH,
    BadJSON,
    InputProblem,
    InvalidInput,
    Predictor,
    Prepared,
    Recommender,
    batch_schema,
    count_items,
    inline_refs,
    load_model,
    loads,
    patient_schema,
    run_metrics,
    validate_patient,
)
from leader.safety import DEFAULT_MARGIN

ACCESS_LOG = logging.getLogger("leader.access")
ERROR_LOG = logging.getLogger("leader.serve")
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = tuple[tuple[bytes, bytes], ...]

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
INLINE_BODY = 4096  # bodies up to this size are parsed on the event loop (< 10 ms, errors included)
INLINE_PATIENTS = 8  # answers for up to this many patients are formatted on the event loop
MAX_HEADERS = 16_384  # bytes of request headers (431 beyond; uvicorn bounds unfinished ones)
CLIENT_GONE = 499  # logged (never sent) when the client disconnects before the answer
RECOMMEND = "/v1/recommend"  # answered by Guard without the router (same handler)
EXAMPLE = {"visits": [{"diagnoses": ["4019", "25000"], "procedures": ["3893"]}]}  # in the docs
API_PATHS = ("/v1/", "/cds-services")  # token, API headers (CDS Hooks: leader.cds_hooks)


@dataclass
class ServeConfig(Config):
    token: str | None = option(
        None, "Bearer token required on /v1/* except health, and /cds-services (None: open)."
    )
    max_body: int = option(1_000_000, "Largest request body in bytes (413 beyond).")
    max_batch: int = option(MAX_BATCH, "Most patients in one request (413 beyond).")
    max_visits: int = option(5_000, "Most visits in one request, all patients together (413).")
    max_codes: int = option(50_000, "Most codes in one request, all patients and visits (413).")
    batching: bool = option(True, "Pool concurrent requests into one model call.")
    max_model_batch: int = option(256, "Most patients in one model call when batching.")
    access_log: bool = option(True, "One JSON line per request on the 'leader.access' logger.")
    margin: float = option(DEFAULT_MARGIN, "ddi_safe: both drugs of a pair stay from here.")
    allowed_hosts: list[str] = option(
        help="Host names accepted without a token besides loopback and --host (DNS rebinding).",
        factory=list,
    )
    body_timeout: float = option(10.0, "Seconds to receive a whole request body (408 beyond).")
    head_timeout: float = option(10.0, "Seconds to receive a request's headers (then closed).")
    keep_alive: int = option(5, "Seconds an idle keep-alive connection stays open.")
    max_connections: int = option(200, "Open connections at most (503 and close beyond).")
    fhir_drug_map: str | None = option(None, "RxCUI -> ATC CSV for FHIR drugs (rxcui2atc4.csv).")

    def max_values(self) -> int:
        """JSON values (counted as commas, before parsing) a valid request can need at most:
        every code, ten per visit and sixty per patient (its keys and profile)."""
        return self.max_codes + 10 * self.max_visits + 60 * self.max_batch

    def check(self) -> list[str]:
        positive = ("max_body", "max_batch", "max_visits", "max_codes", "max_model_batch")
        problems = [
            f"{name} must be at least 1; got {getattr(self, name)}"
            for name in (*positive, "max_connections")
            if getattr(self, name) < 1
        ]
        problems += [
            f"{name} must be positive; got {getattr(self, name)}"
            for name in ("body_timeout", "head_timeout", "keep_alive")
            if not getattr(self, name) > 0
        ]
        return problems


# ----------------------------------------------------------------------------- responses
PAGE_HEADERS: Headers = (  # the page, the docs and their static files
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
)
API_HEADERS: Headers = (  # JSON answers (OWASP REST): fewer headers, less CPU per request
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"cache-control", b"no-store"),
    (b"cross-origin-resource-policy", b"same-origin"),
)


def error_body(path: str, message: str, **extra: Any) -> bytes:
    """The one error shape: ``{"detail": [{"path": ..., "message": ...}]}``."""
    return _dumps({"detail": [{"path": path, "message": message, **extra}]})


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_dumps(data), status_code=status, media_type="application/json",
                    headers=headers)  # fmt: skip


async def _send_error(
    send: Send, status: int, path: str, message: str, headers: Headers = ()
) -> None:
    await _send_json(send, status, error_body(path, message), headers)


async def _send_json(send: Send, status: int, body: bytes, headers: Headers = ()) -> None:
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


def _dumps(data: Any) -> bytes:
    # ensure_ascii: escapes every non-ASCII character, so no string can fail to encode.
    return json.dumps(data, separators=(",", ":")).encode("ascii")


# ----------------------------------------------------------------------------- guard
CLOSE: Headers = ((b"connection", b"close"),)


class Guard:
    """Pure ASGI middleware: Host, token, Content-Type, body limits; headers; access log."""

    def __init__(
        self, app: ASGIApp, config: ServeConfig, service: RecommendService | None = None
    ) -> None:
        self.app = app
        self.config = config
        self.service = service  # answers POST /v1/recommend without the framework's routing
        self.token = config.token.encode() if config.token else None
        self.hosts = frozenset(
            h.lower().strip("[]") for h in (*LOOPBACK_NAMES, *config.allowed_hosts)
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status: int | None = None

        extra = API_HEADERS if scope["path"].startswith(API_PATHS) else PAGE_HEADERS

        async def guarded_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        try:
            await self._handle(scope, receive, guarded_send)
        except Exception:  # a bug, not bad input: log it, answer 500 if nothing was sent
            ERROR_LOG.exception("%s %s failed", scope["method"], scope["path"])
            if status is None:
                await _send_error(guarded_send, 500, "server", "internal error; see the server log")
        finally:
            if self.config.access_log:
                ACCESS_LOG.info(
                    json.dumps(
                        {
                            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            "method": scope["method"],
                            "path": scope["path"],
                            "status": CLIENT_GONE if status is None else status,
                            "ms": round((time.perf_counter() - start) * 1000, 2),
                        }
                    )
                )

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if sum(len(name) + len(value) for name, value in scope["headers"]) > MAX_HEADERS:
            await _send_error(send, 431, "header", f"headers over {MAX_HEADERS} bytes", CLOSE)
            return
        headers = dict(scope["headers"])
        if self.token is None and not self._host_allowed(headers.get(b"host")):
            await _send_error(
                send, 400, "header.host",
                "the Host header does not name this server; without a token only loopback "
                "names (and --allowed-host) are accepted",
            )  # fmt: skip
            return
        if self.token is not None and needs_token(path):
            if not _bearer_matches(headers.get(b"authorization", b""), self.token):
                await _send_error(
                    send, 401, "header.authorization",
                    "missing or wrong bearer token (send 'Authorization: Bearer TOKEN')",
                    ((b"www-authenticate", b'Bearer realm="leader"'),),
                )  # fmt: skip
                return
        fast = self.service is not None and scope["method"] == "POST" and path == RECOMMEND
        allow = None if fast else allow_header(self.app, scope["method"], path)
        if allow is not None:  # a method the document does not list: before any body check
            await _send_error(
                send, 405, "url", _ROUTING_TEXT[405], ((b"allow", allow.encode("latin-1")),)
            )
            return
        if scope["method"] in ("POST", "PUT", "PATCH"):
            if not _is_json(headers.get(b"content-type", b"")):
                await _send_error(
                    send, 415, "header.content-type",
                    "send the body as 'Content-Type: application/json' (UTF-8)", CLOSE,
                )  # fmt: skip
                return
            body = await self._read_body(headers, receive, send)
            if body is None:
                return
            if self.service is not None and fast:
                # The hot path: same handler as the documented FastAPI route, minus routing
                # and parameter injection (about a third of the per-request CPU).
                status, payload = await self.service.handle(body, scope["query_string"])
                await _send_json(send, status, payload, CLOSE if status == 413 else ())
                return
            await self.app(scope, _replay(body, receive), send)
            return
        await self.app(scope, receive, send)

    def _host_allowed(self, host: bytes | None) -> bool:
        if host is None:
            return False
        name = host.decode("latin-1").strip().lower()
        if name.startswith("["):  # [v6]:port
            name = name[1 : name.find("]")] if "]" in name else name
        elif name.count(":") == 1:
            name = name.rsplit(":", 1)[0]
        return name.rstrip(".") in self.hosts

    async def _read_body(
        self, headers: dict[bytes, bytes], receive: Receive, send: Send
    ) -> bytes | None:
        limit = self.config.max_body
        declared = headers.get(b"content-length")
        too_big = f"request body over {limit} bytes; send fewer patients per request"
        if declared is not None:
            if not declared.isdigit():
                await _send_error(send, 400, "header.content-length", "bad Content-Length", CLOSE)
                return None
            if len(declared) > 18 or int(declared) > limit:  # no 4,300-digit int() here
                await _send_error(send, 413, "body", too_big, CLOSE)
                return None
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.config.body_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None  # logged as 499
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:  # chunked (or lying) bodies are cut off while streaming
                        await _send_error(send, 413, "body", too_big, CLOSE)
                        return None
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(chunks)
        except TimeoutError:
            await _send_error(
                send, 408, "body",
                f"the request body did not arrive within {self.config.body_timeout:g} s", CLOSE,
            )  # fmt: skip
            return None


def needs_token(path: str) -> bool:
    """Whether a request to ``path`` needs the bearer token (when the server has one)."""
    return path.startswith(API_PATHS) and path != "/v1/health"


def _replay(body: bytes, receive: Receive) -> Receive:
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:  # the app asks again only to wait for a disconnect
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _bearer_matches(header: bytes, token: bytes) -> bool:
    """``Bearer TOKEN`` with the scheme in any case (RFC 7235), compared in constant time."""
    scheme, _, given = header.partition(b" ")
    ok_scheme = scheme.lower() == b"bearer"
    return hmac.compare_digest(given.strip(b" "), token) and ok_scheme


def _is_json(content_type: bytes) -> bool:
    """``application/json``, optionally with ``charset=utf-8`` (nothing else)."""
    kind, _, params = content_type.decode("latin-1").partition(";")
    if kind.strip().lower() != "application/json":
        return False
    for param in filter(None, (p.strip() for p in params.split(";"))):
        name, _, value = param.partition("=")
        if name.strip().lower() != "charset" or value.strip().strip('"').lower() != "utf-8":
            return False
    return True


# ----------------------------------------------------------------------------- batching
TURN = 64  # patients of one large request per model call (others' requests come between)


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
        size = min(self.max_model_batch, TURN)
        if len(prepared) > size:  # in turns, so other requests' calls come in between
            parts = [
                await self.predict(prepared[i : i + size]) for i in range(0, len(prepared), size)
            ]
            return np.concatenate(parts)
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


@dataclass
class _Parsed:
    """A request body turned into model input, or the error answer."""

    prepared: list[Prepared]
    batch: bool
    ddi_safe: bool
    top: int
    miss_rate: float | None = None
    explain: int = 0  # contributions listed per drug (0: no explanations)


class RecommendService:
    """``POST /v1/recommend``: raw body and query string in, (status, JSON bytes) out.

    Work proportional to the body (parsing, validating, formatting many results) runs on
    one worker thread when the body or the answer is large: the event loop only waits, so
    other requests and ``/v1/health`` are answered meanwhile. Large requests queue for that
    thread one at a time, which also bounds the memory they take together.
    """

    def __init__(self, recommender: Recommender, batcher: Batcher | None, config: ServeConfig):
        self.recommender = recommender
        self.batcher = batcher
        self.max_batch = config.max_batch
        self.max_codes = config.max_codes
        self.max_visits = config.max_visits
        self.max_values = config.max_values()
        drug_map = read_drug_map(config.fhir_drug_map) if config.fhir_drug_map else None
        self.fhir = FhirInput(recommender.known, drug_map)
        self.worker: ThreadPoolExecutor | None = None  # started on first large request
        self.conformal = getattr(recommender.calibration, "conformal", None) is not None

    async def handle(self, body: bytes, query: bytes) -> tuple[int, bytes]:
        if len(body) <= INLINE_BODY:
            parsed = self.parse(body, query)
        else:
            parsed = await self._offload(self.parse, body, query)
        if not isinstance(parsed, _Parsed):
            return parsed
        if self.batcher is not None:
            prob = await self.batcher.predict(parsed.prepared)
        else:
            prob = self.recommender.predict(parsed.prepared)
        if len(parsed.prepared) <= INLINE_PATIENTS and not parsed.explain:
            return 200, self.answer(parsed, prob)
        return 200, await self._offload(self.answer, parsed, prob)

    def parse(self, body: bytes, query: bytes) -> _Parsed | tuple[int, bytes]:
        """Query options and validated patients, or (status, error body)."""
        options = parse_query(query)
        if isinstance(options, tuple) and len(options) == 2:
            return 422, error_body(*options)
        ddi_safe, top, strict, miss_rate = options  # type: ignore[misc]
        if miss_rate is not None and not self.conformal:
            message = "this model has no conformal risk curve (calibration.json beside it)"
            return 422, error_body("query.miss_rate", message + "; run `leader calibrate`")
        explain = parse_explain(dict(parse_qsl(query.decode("latin-1"), keep_blank_values=True)))
        if isinstance(explain, tuple):
            return 422, error_body(*explain)
        values = body.count(
            b","
        )  # >= JSON values - 1: bounds the parser's work (C, no GIL release)
        if values > self.max_values:
            message = f"{values} commas; at most {self.max_values} JSON values per request"
            return 413, error_body("$", message)
        try:
            document = loads(body)
        except BadJSON as exc:
            return 422, error_body(exc.path, exc.message)
        fhir = None
        if is_fhir(document):  # a FHIR Bundle or resources -> the JSON patient (leader.fhir)
            try:
                document, fhir = self.fhir.convert(document)
            except LeaderError as exc:
                return 422, error_body("$", str(exc))
        batch = isinstance(document, dict) and "patients" in document and "visits" not in document
        if batch:
            problem = _batch_problem(document, self.max_batch)
            if problem:
                return problem
            records = document["patients"]
        else:
            records = [document]
        visits, codes = count_items(records)
        for what, count, most in (
            ("visits", visits, self.max_visits),
            ("codes", codes, self.max_codes),
        ):
            if count > most:
                message = f"{count} {what}; at most {most} per request: send fewer patients"
                return 413, error_body("$", message)
        try:
            prepared = self.recommender.prepare_all(records, strict)
            if fhir is not None:
                self.fhir.report(prepared[0], document, fhir, strict)
        except InvalidInput as exc:
            return _problems(exc.problems, batch)
        if explain and (work := explain_work([p.sample for p in prepared])) > EXPLAIN_WORK:
            message = f"explain=true would score {work} codes; at most {EXPLAIN_WORK}: send fewer"
            return 413, error_body("$", message + " patients or codes")
        return _Parsed(prepared, batch, ddi_safe, top, miss_rate, explain)

    def answer(self, parsed: _Parsed, prob: np.ndarray) -> bytes:
        """The JSON answer, one patient at a time: no single ``dumps`` holds the GIL long, and
        only one patient's result objects are alive at once (little for the GC to walk)."""
        args = (parsed.prepared, prob, parsed.ddi_safe, parsed.top, parsed.miss_rate)
        results: Iterable[dict[str, Any]] = self.recommender.iter_results(*args)
        if parsed.explain:
            results = list(results)
            add_explanations(self.recommender, parsed.prepared, results, parsed.explain)
        encoded = [_dumps(r) for r in results]
        if not parsed.batch:
            return encoded[0]
        return b'{"results":[' + b",".join(encoded) + b"]}"

    async def _offload(self, func: Callable[..., Any], *args: Any) -> Any:
        if self.worker is None:
            self.worker = ThreadPoolExecutor(1, thread_name_prefix="leader-parse")
        return await asyncio.get_running_loop().run_in_executor(self.worker, func, *args)

    def close(self) -> None:
        if self.worker is not None:
            self.worker.shutdown(wait=False, cancel_futures=True)
            self.worker = None


def parse_query(query: bytes) -> tuple[bool, int, bool, float | None] | tuple[str, str]:
    """``ddi_safe``, ``top``, ``strict``, ``miss_rate`` from a query string, or (path, problem)."""
    values = dict(parse_qsl(query.decode("latin-1"), keep_blank_values=True))
    flags = []
    for name in ("ddi_safe", "strict"):
        text = values.get(name, "false").lower()
        if text not in TRUE and text not in FALSE:
            return f"query.{name}", f"{name}={_excerpt(values[name])}: use true or false"
        flags.append(text in TRUE)
    text = values.get("top", str(DEFAULT_TOP))
    if not (text.isascii() and text.isdigit() and len(text) <= 6):
        return "query.top", f"top={_excerpt(text)}: not an integer between 0 and {MAX_TOP}"
    top = int(text)
    if not 0 <= top <= MAX_TOP:
        return "query.top", f"top={top}: must be between 0 and {MAX_TOP}"
    miss_rate = None
    if "miss_rate" in values:
        text = values["miss_rate"]
        try:
            miss_rate = float(text) if len(text) <= 30 else math.nan
        except ValueError:
            miss_rate = math.nan
        if not 0.0 < miss_rate < 1.0:  # NaN fails too
            problem = f"miss_rate={_excerpt(text)}: not a number strictly between 0 and 1"
            return "query.miss_rate", problem
    return flags[0], top, flags[1], miss_rate


def _excerpt(text: str, limit: int = 20) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _problems(problems: list[InputProblem], batch: bool) -> tuple[int, bytes]:
    detail = [
        {
            "patient": p.patient,
            "path": p.path.replace("$", f"$.patients[{p.patient}]", 1) if batch else p.path,
            "message": p.message,
        }
        for p in problems[:MAX_PROBLEMS_ANSWERED]
    ]
    return 422, _dumps({"detail": detail})


MAX_PROBLEMS_ANSWERED = 50  # problems in one 422 answer (10 per patient at most)


def _batch_problem(document: dict[str, Any], max_batch: int) -> tuple[int, bytes] | None:
    extra = sorted(set(document) - {"patients"})
    if extra:
        shown = ", ".join(_excerpt(k) for k in extra[:5])
        return 422, error_body(
            "$", f"unexpected field(s) {shown}; a batch is {{'patients': [...]}}"
        )
    patients = document["patients"]
    if not isinstance(patients, list) or not patients:
        return 422, error_body("$.patients", "must be a non-empty list of patients")
    if len(patients) > max_batch:
        message = f"{len(patients)} patients; at most {max_batch} per request"
        return 413, error_body("$.patients", message)
    return None


# ----------------------------------------------------------------------------- app
def create_app(
    run_dir: str | os.PathLike[str] | None = None,
    config: ServeConfig | None = None,
    model: Predictor | None = None,
) -> Guard:
    """The ASGI app serving the run in ``run_dir`` (or an already loaded ``model``)."""
    config = config or ServeConfig()
    config.validate("serve")
    if model is None:
        if run_dir is None:
            raise ValueError("give run_dir or model")
        model = load_model(run_dir)
    metrics = run_metrics(run_dir) if run_dir is not None else {}
    metrics.pop("history", None)  # per-epoch log: long, and in the run folder anyway
    recommender = Recommender(model, margin=config.margin)
    batcher = Batcher(recommender, config.max_model_batch) if config.batching else None
    service = RecommendService(recommender, batcher, config)
    codes = _CodeIndex(model)
    validate_patient(None, 0)  # builds the schema validator now, not on the first bad request

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()
        if batcher is not None:
            batcher.close()

    api = FastAPI(
        lifespan=lifespan,
        docs_url=None,  # the default docs load Swagger UI from a CDN; ours work offline
        redoc_url=None,
        title="LEADER medication recommendation",
        version=__version__,
        description="Research tool, not medical advice. Recommends a visit's medication set "
        "(ATC-3) from its diagnosis and procedure codes with a distilled LEADER student. "
        'Every error is {"detail": [{"path", "message", ["patient"]}]}.',
    )
    _error_handlers(api)
    register_cds_hooks(api, service)
    install_openapi(api, protected=lambda path: config.token is not None and needs_token(path))
    api.state.recommender = recommender
    api.state.batcher = batcher
    api.state.service = service
    model_info = {
        "version": __version__,
        "run": Path(run_dir).name if run_dir is not None else None,
        "threshold": recommender.threshold,
        "vocabulary": {kind: len(model.vocab.codes[kind]) for kind in model.vocab.codes},
        "profile_fields": model_profile_fields(model),
        "ddi": {"source": model.ddi_source, "pairs": len(model.ddi_pairs)},
        "ddi_safe_margin": config.margin,
        "calibration": getattr(recommender.calibration, "method", None),
        "conformal_visits": getattr(getattr(recommender.calibration, "conformal", None), "n", None),
        "limits": {"patients": config.max_batch, "visits": config.max_visits,
                   "codes": config.max_codes, "body_bytes": config.max_body},
        "metrics": metrics,
    }  # fmt: skip
    single = inline_refs(patient_schema())
    request_schema = {"oneOf": [single, batch_schema(config.max_batch)]}

    @api.get(
        "/v1/health", tags=["service"], response_model=None, responses={200: answer(ref("Health"))}
    )
    @api.head("/v1/health", tags=["service"], response_model=None)  # one operationId per method
    def health() -> dict[str, str]:
        """Liveness: 200 once the model is loaded (GET or HEAD; no token needed)."""
        return {"status": "ok"}

    @api.get("/v1/model", tags=["service"], responses={200: answer(ref("Model"))})
    def model_endpoint() -> Response:
        """Version, vocabulary sizes, threshold, DDI source, limits and the run's metrics."""
        return json_response(model_info)

    @api.get("/v1/codes", tags=["codes"], responses={200: answer(ref("Codes"))})
    def search_codes(
        kind: Literal["diagnosis", "procedure", "medication"] = Query("diagnosis"),
        q: str = Query("", max_length=100, description="code prefix or words of the name"),
        limit: int = Query(20, ge=1, le=200),
    ) -> Response:
        """Codes of one kind whose code starts with ``q`` or whose name contains it."""
        return json_response({"kind": kind, "codes": codes.search(kind, q, limit)})

    @api.post(
        RECOMMEND,
        tags=["recommend"],
        responses={
            200: answer(
                {"oneOf": [ref("Recommendation"), ref("Recommendations")]},
                "One patient: its result; a batch: {'results': [...]}, in input order.",
            ),
            413: {
                "description": "Request body over --max-body bytes, or more patients, "
                "visits or codes than GET /v1/model's 'limits' (connection closed)."
            },
            422: {
                "description": "Invalid query parameter or body (not JSON, not the schema), "
                "each problem with its JSON path and, in a batch, its patient; with "
                "strict=true, also a code the model's vocabulary lacks (GET /v1/codes)."
            },
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": request_schema, "example": EXAMPLE}},
            }
        },
    )
    async def recommend(
        request: Request,
        ddi_safe: bool = Query(False, description="thin interacting pairs (safety layer)"),
        top: int = Query(DEFAULT_TOP, ge=0, le=MAX_TOP, description="ranked drugs (0 = all)"),
        strict: bool = Query(False, description="unknown codes are an error (422)"),
        miss_rate: float | None = Query(
            None,
            gt=0,
            lt=1,
            description="add the conformal set expected to miss at most this fraction of the "
            "visit's drugs (needs calibration.json; 422 without)",
        ),
        explain: bool = Query(False, description="why each listed drug: `explanations`, the "
                              "input items with signed contributions (exact occlusion)"),
        explain_items: int = Query(DEFAULT_ITEMS, ge=1, le=MAX_ITEMS,
                                   description="contributions per drug with explain=true"),
    ) -> Response:
        """Recommend for one patient (answer: one result) or ``{"patients": [...]}``
        (answer: ``{"results": [...]}``). 422 names the patient and the JSON path; 413 for
        more than the documented patients or codes per request (``GET /v1/model``). The body
        may also be one patient's FHIR R4 data: a Bundle (``resourceType: Bundle``) or a JSON
        list of its resources (Patient, Encounter, Condition, Procedure, MedicationRequest /
        Administration / Statement); the latest encounter is the visit, codes are matched to
        the model's vocabulary by system and unknown systems reported as unknown codes."""
        # Served by Guard's fast path; kept here for the OpenAPI docs and for mounting
        # the FastAPI app on its own. Both run RecommendService.handle.
        status, payload = await service.handle(await request.body(), request.url.query.encode())
        return Response(payload, status_code=status, media_type="application/json")

    static = resources.files("leader").joinpath("static")
    page = static.joinpath("index.html").read_text("utf-8")
    docs = static.joinpath("docs.html").read_text("utf-8")

    @api.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    @api.get("/docs", include_in_schema=False)
    def api_docs() -> HTMLResponse:
        return HTMLResponse(docs)

    api.mount("/static", StaticFiles(directory=str(static)), name="static")
    return Guard(api, config, service)


def _error_handlers(api: FastAPI) -> None:
    """The framework's own errors (404, 405, query validation, bugs) in the one shape."""

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = _ROUTING_TEXT.get(exc.status_code, str(exc.detail))
        return Response(error_body("url", message), exc.status_code,
                        headers=exc.headers, media_type="application/json")  # fmt: skip

    async def invalid(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        detail = [
            {"path": ".".join(str(part) for part in e["loc"]), "message": _short_msg(e["msg"])}
            for e in exc.errors()[:MAX_PROBLEMS_ANSWERED]
        ]  # never e["input"]: the input is not echoed
        return Response(_dumps({"detail": detail}), 422, media_type="application/json")

    async def bug(_: Request, exc: Exception) -> Response:
        return Response(error_body("server", "internal error; see the server log"), 500,
                        media_type="application/json")  # fmt: skip

    api.add_exception_handler(HTTPException, http_error)
    api.add_exception_handler(RequestValidationError, invalid)
    api.add_exception_handler(Exception, bug)


_ROUTING_TEXT = {404: "not found; see /docs", 405: "method not allowed"}


def _short_msg(message: str, limit: int = 200) -> str:
    return message if len(message) <= limit else message[: limit - 3] + "..."


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


# ----------------------------------------------------------------------------- server
def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine only."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def display_url(host: str, port: int) -> str:
    """``http://HOST:PORT/`` with IPv6 addresses in brackets (RFC 3986)."""
    bare = host.strip("[]")
    return f"http://[{bare}]:{port}/" if ":" in bare else f"http://{bare}:{port}/"


def run(app: Guard, config: ServeConfig, host: str, port: int, log_level: str = "warning") -> None:
    """Serve ``app`` with uvicorn under the connection limits of ``config``."""
    import uvicorn

    # A worker thread holding the GIL hands it back after this long (default 5 ms): the
    # event loop, which answers /v1/health and small requests, waits less for it.
    sys.setswitchinterval(0.001)
    server = uvicorn.Server(uvicorn_config(app, config, host, port, log_level))
    server.run()


def uvicorn_config(
    app: Guard, config: ServeConfig, host: str, port: int, log_level: str = "warning"
) -> Any:
    """uvicorn's Config: limits, timeouts, no server banner, the guarded HTTP protocol."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=guarded_protocol(config.head_timeout, config.max_connections),
        limit_concurrency=config.max_connections + 1,  # our protocol closes beyond the cap
        timeout_keep_alive=config.keep_alive,
        h11_max_incomplete_event_size=MAX_HEADERS + 4096,  # a request head still arriving
        access_log=False,  # Guard logs one JSON line per request
        server_header=False,
        log_level=log_level,
    )


def guarded_protocol(head_timeout: float, max_connections: int, parser: str = "auto") -> type[Any]:
    """uvicorn's HTTP protocol (httptools when installed, as uvicorn's "auto" picks, else
    h11; ``parser="h11"`` forces it) with a request-head deadline, a head size limit and a
    connection cap.

    uvicorn closes idle keep-alive connections but waits forever for the first request
    head, and a byte every few seconds resets its timer; here every request head must be
    complete within ``head_timeout`` seconds of the connection (or of the previous answer)
    and within ``MAX_HEADERS`` + 4 KB, and connections beyond ``max_connections`` get a 503
    and are closed.
    """
    base: type[Any]
    try:  # the module imports httptools: ImportError without it
        if parser == "h11":
            raise ImportError("h11 asked for")
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol as base
    busy = _raw_error(503, "Service Unavailable", "server", "too many connections; retry later")
    too_large = _raw_error(431, "Request Header Fields Too Large", "header", "headers too large")
    head_limit = MAX_HEADERS + 4096  # request line and framing

    class GuardedProtocol(base):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._head_timer: asyncio.TimerHandle | None = None
            self._seen_cycle: object = None
            self._head_bytes = 0
            if len(self.connections) > max_connections:
                transport.write(busy)
                transport.close()
                return
            self._arm()

        def data_received(self, data: bytes) -> None:
            between = self.cycle is None or self.cycle.response_complete  # no request open
            super().data_received(data)
            if self.cycle is not self._seen_cycle:  # a complete request head arrived
                self._seen_cycle = self.cycle
                self._head_bytes = 0
                self._disarm()
            elif between:
                self._head_bytes += len(data)
                if self._head_bytes > head_limit and not self.transport.is_closing():
                    self.transport.write(too_large)
                    self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._seen_cycle = self.cycle
                self._head_bytes = 0
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(head_timeout, self._head_timed_out)

        def _disarm(self) -> None:
            if getattr(self, "_head_timer", None) is not None:
                self._head_timer.cancel()  # type: ignore[union-attr]
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a request is being answered: the body timeout is Guard's
            if not self.transport.is_closing():
                self.transport.close()

    return GuardedProtocol


def _raw_error(status: int, reason: str, path: str, message: str) -> bytes:
    """A whole HTTP/1.1 error answer that closes the connection (for the protocol layer)."""
    body = error_body(path, message)
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"connection: close\r\ncontent-length: {len(body)}\r\n"
    )
    extra = "retry-after: 1\r\n" if status == 503 else ""
    return (head + extra + "\r\n").encode("ascii") + body
