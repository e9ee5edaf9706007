"""The service's OpenAPI document, made to tell the truth (issue 22).

FastAPI documents what its router sees: a 200, and a 422 in its own ``HTTPValidationError``
shape. The service answers more than that, and in one error shape of its own: the
:class:`leader.serve.Guard` in front of the router refuses bad heads (400, 401, 431), bodies
(408, 413, 415) and, through the protocol layer, connections (503); the handlers refuse bad
input (422). :func:`install` rewrites the generated document so that every operation, of
every route the app has when the document is first asked for (``include_router`` ones too),
lists each status it can answer, with the :data:`ERROR_SCHEMA` body and the headers that
come with it. :func:`allow_header` lets the Guard answer 405 (with ``Allow``) for a method
the document does not list, before it looks at a body's content type.

Checked by a fuzzer that reads the document (Schemathesis, ``tests/test_openapi.py``).

>>> api = FastAPI()                                              # doctest: +SKIP
>>> install(api, protected=lambda path: path.startswith("/v1/"))  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import re
import weakref
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "description": "Every error the service answers, from any layer: one or more problems, "
    "each naming where it is (a JSON path into the body such as '$.visits[0].diagnoses[1]', "
    "'query.top', 'header.content-type', 'body', 'url') and what is wrong; 'patient' is the "
    "index of the patient in a batch. The input is never echoed beyond a short excerpt.",
    "type": "object",
    "required": ["detail"],
    "additionalProperties": False,
    "properties": {
        "detail": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["path", "message"],
                "additionalProperties": False,
                "properties": {
                    "path": {"type": "string"},
                    "message": {"type": "string"},
                    "patient": {"type": "integer", "minimum": 0},
                },
            },
        }
    },
}


def _object(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    """An object with these properties; others may be added later (clients ignore them)."""
    return {
        "type": "object",
        "required": list(required),
        "properties": {**required, **(optional or {})},
    }


_INT = {"type": "integer", "minimum": 0}
_PROBABILITY = {"type": "number", "minimum": 0, "maximum": 1}
_DRUG = _object({"code": {"type": "string"}, "name": {"type": "string"}})
_SCORED = _object({**_DRUG["properties"], "probability": _PROBABILITY})
# What the service answers when all is well: named components, referenced by the routes.
SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": ERROR_SCHEMA,
    "Recommendation": {
        "description": "One patient's result: the recommended set at the run's threshold, "
        "the `top` most probable drugs (all for top=0), each interacting pair in the set, "
        "and the codes the model does not know (the first 20 listed, all counted).",
        **_object(
            {
                "index": _INT,
                "id": {"type": ["string", "integer", "null"]},
                "threshold": _PROBABILITY,
                "ddi_safe": {"type": "boolean"},
                "recommended": {"type": "array", "items": _SCORED},
                "ranked": {
                    "type": "array",
                    "items": _object({**_SCORED["properties"], "recommended": {"type": "boolean"}}),
                },
                "ddi_warnings": {
                    "type": "array",
                    "items": _object(
                        {
                            "drugs": {
                                "type": "array",
                                "items": _DRUG,
                                "minItems": 2,
                                "maxItems": 2,
                            },
                            "source": {"type": ["string", "null"]},
                        }
                    ),
                },
                "unknown_codes": {
                    "type": "array",
                    "maxItems": 20,
                    "items": _object(
                        {
                            "visit": _INT,
                            "kind": {"enum": ["diagnosis", "procedure", "medication"]},
                            "code": {"type": "string"},
                        }
                    ),
                },
                "unknown_count": _INT,
            },
            {
                "withheld_for_ddi": {
                    "description": "ddi_safe=true: drugs over the threshold left out for an "
                    "interaction with a more probable recommended drug.",
                    "type": "array",
                    "items": _object(
                        {
                            **_SCORED["properties"],
                            "interacts_with": {"type": "array", "items": {"type": "string"}},
                        }
                    ),
                }
            },
        ),
    },
}
SCHEMAS["Recommendations"] = _object(
    {"results": {"type": "array", "items": {"$ref": "#/components/schemas/Recommendation"}}}
)
SCHEMAS["Health"] = _object({"status": {"const": "ok"}})
SCHEMAS["Codes"] = _object(
    {
        "kind": {"enum": ["diagnosis", "procedure", "medication"]},
        "codes": {"type": "array", "items": _DRUG},
    }
)
SCHEMAS["Model"] = _object(
    {
        "version": {"type": "string"},
        "run": {"type": ["string", "null"], "description": "The run folder's name."},
        "threshold": _PROBABILITY,
        "vocabulary": {"type": "object", "additionalProperties": _INT},
        "profile_fields": {"type": "array", "items": {"type": "string"}},
        "ddi": _object({"source": {"type": ["string", "null"]}, "pairs": _INT}),
        "ddi_safe_margin": {"type": "number"},
        "limits": {
            "description": "Most patients, visits and codes per request, and body bytes.",
            **_object({"patients": _INT, "visits": _INT, "codes": _INT, "body_bytes": _INT}),
        },
        "metrics": {"type": "object", "description": "The run's metrics.json (no history)."},
    }
)


def answer(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    """A route's ``responses={200: answer(...)}`` entry: a JSON body of ``schema``."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def ref(name: str) -> dict[str, str]:
    """A reference to one of :data:`SCHEMAS`."""
    return {"$ref": f"#/components/schemas/{name}"}


# What each status means, in every operation that can answer it; a route may say more by
# declaring the status itself (``responses={413: {"description": ...}}``).
STATUS_TEXT: dict[int, str] = {
    400: "Bad request head: without a token, a Host header that does not name this server "
    "(DNS rebinding; loopback names and --allowed-host are accepted); a bad Content-Length.",
    401: "Missing or wrong bearer token ('Authorization: Bearer TOKEN').",
    404: "Not found.",
    408: "The request body did not arrive within --body-timeout seconds (connection closed).",
    413: "Request body over --max-body bytes (connection closed).",
    415: "The body is not sent as 'Content-Type: application/json' (UTF-8; connection closed).",
    422: "Invalid query parameter or body: each problem with its path.",
    431: "Request headers over 16 KB (connection closed).",
    500: "A bug, not bad input: logged on the server; nothing of the input is echoed.",
    503: "More open connections than --max-connections: retry later (connection closed).",
}
STATUS_HEADERS: dict[int, dict[str, Any]] = {
    401: {
        "WWW-Authenticate": {
            "description": 'Bearer realm="leader"',
            "required": True,
            "schema": {"type": "string"},
        }
    },
    503: {
        "Retry-After": {
            "description": "Seconds to wait before retrying.",
            "required": True,
            "schema": {"type": "integer", "minimum": 0},
        }
    },
}
EVERY_OPERATION = (400, 431, 500, 503)
WITH_BODY = (408, 413, 415)
BODY_METHODS = ("post", "put", "patch")
FASTAPI_VALIDATION = ("HTTPValidationError", "ValidationError")
_Methods = tuple[dict[str, frozenset[str]], list[tuple["re.Pattern[str]", frozenset[str]]]]
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def install(api: FastAPI, protected: Callable[[str], bool]) -> None:
    """Make ``api.openapi()`` (and ``/openapi.json``) return the completed document.

    ``protected(path)``: whether requests to ``path`` need the bearer token (401).
    The document is built on first use (the Guard's first request), so routes added
    between this call and then, ``include_router`` ones too, are included.
    """
    generate = api.openapi
    done: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if "document" not in done:
            done["document"] = complete(copy.deepcopy(generate()), protected)
            api.openapi_schema = done["document"]
        return done["document"]  # type: ignore[no-any-return]

    api.openapi = openapi  # type: ignore[method-assign]


def complete(document: dict[str, Any], protected: Callable[[str], bool]) -> dict[str, Any]:
    """The generated document with every status and the one error shape on every operation."""
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in FASTAPI_VALIDATION:
        schemas.pop(name, None)
    schemas.update(SCHEMAS)
    secured = False
    for path, item in document.get("paths", {}).items():
        _unique_ids(item)
        for method in METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            if protected(path):
                operation["security"] = [{"bearer": []}]
                secured = True
            for status in _statuses(path, method, operation, protected(path)):
                _document_error(operation.setdefault("responses", {}), status)
    if secured:
        components.setdefault("securitySchemes", {})["bearer"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "The token given to `leader serve` (--token or LEADER_TOKEN).",
        }
    return document


def _statuses(path: str, method: str, operation: dict[str, Any], protected: bool) -> list[int]:
    statuses = list(EVERY_OPERATION)
    if protected:
        statuses.append(401)
    if "{" in path:  # a path parameter can name nothing
        statuses.append(404)
    if method in BODY_METHODS:  # the Guard reads (and checks) a body before any route
        statuses += WITH_BODY
    if "requestBody" in operation or operation.get("parameters"):
        statuses.append(422)
    # Statuses the route declares itself (an error the handler answers) keep their text.
    statuses += [int(s) for s in operation.get("responses", {}) if s.isdigit() and int(s) >= 400]
    return sorted(set(statuses))


def _document_error(responses: dict[str, Any], status: int) -> None:
    declared = responses.get(str(status), {})
    text = declared.get("description")
    if not text or text == "Validation Error":  # FastAPI's default for its 422
        text = STATUS_TEXT.get(status, "Error.")
    response: dict[str, Any] = {
        "description": text,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if status in STATUS_HEADERS:
        response["headers"] = STATUS_HEADERS[status]
    responses[str(status)] = response


def _unique_ids(item: dict[str, Any]) -> None:
    """FastAPI gives every method of one route the same operationId (``health_v1_health_head``
    for GET and HEAD); a client needs one each: ``health_v1_health_get``, ``..._head``."""
    operations = {m: item[m] for m in METHODS if m in item and "operationId" in item[m]}
    ids = [op["operationId"] for op in operations.values()]
    for method, operation in operations.items():
        given = operation["operationId"]
        if ids.count(given) > 1:
            base = next((given[: -len(m) - 1] for m in METHODS if given.endswith(f"_{m}")), given)
            operation["operationId"] = f"{base}_{method}"


def allow_header(app: Any, method: str, path: str) -> str | None:
    """The ``Allow`` value for a 405 when the app's OpenAPI document has ``path`` but not
    ``method`` there; None when it has both, or not the path (left to the router: 404, or a
    route outside the document such as the page). Read from the document, so the answer
    and the contract agree whatever the routing is made of (routers, mounts)."""
    generate = getattr(app, "openapi", None)
    if generate is None:
        return None
    document = generate()
    table = _TABLES.get(app)
    if table is None or table[0] is not document:
        table = (document, _method_table(document))
        _TABLES[app] = table
    exact, templated = table[1]
    methods = exact.get(path)
    if methods is None:
        methods = next((m for pattern, m in templated if pattern.fullmatch(path)), None)
    if methods is None or method in methods:
        return None
    return ", ".join(sorted(methods))


_TABLES: weakref.WeakKeyDictionary[Any, tuple[dict[str, Any], _Methods]] = (
    weakref.WeakKeyDictionary()
)


def _method_table(document: dict[str, Any]) -> _Methods:
    """Documented paths: exact ones in a dict, templated ones (``/x/{id}``) as patterns."""
    exact: dict[str, frozenset[str]] = {}
    templated: list[tuple[re.Pattern[str], frozenset[str]]] = []
    for path, item in document.get("paths", {}).items():
        methods = frozenset(m.upper() for m in METHODS if m in item)
        if "{" in path:
            parts = re.split(r"\{[^}]*\}", path)
            templated.append((re.compile("[^/]+".join(map(re.escape, parts))), methods))
        else:
            exact[path] = methods
    return exact, templated
