"""The OpenAPI document of `leader serve` is the truth (issue 22).

Schemathesis, a client no one here wrote, reads the real server's ``/openapi.json``, generates
requests from it (valid and invalid, every operation, unsupported methods, no token) and
checks every answer against the document: no 5xx, only documented statuses, headers and
bodies, schema-valid requests accepted, invalid ones rejected, 405 with ``Allow``. Plain tests
pin the statuses a fuzzer rarely reaches (413, 415, 431, 401) to the document, and check
that routes added later get the same documentation.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from fastapi import APIRouter, Query
from fastapi.testclient import TestClient

from leader.serve import ServeConfig, create_app
from test_serve_fixtures import Server, start_server, trained_run

TOKEN = "openapi-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PATIENT = {"id": "p1", "visits": [{"diagnoses": ["d1", "d2"], "procedures": ["x1"]}]}
CONFIG = Path(__file__).resolve().parents[1] / "schemathesis.toml"  # the README's command reads it
EXAMPLES = 100  # Schemathesis test cases per operation and phase at most
SEED = 22


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    run = trained_run(tmp_path_factory)
    log = tmp_path_factory.mktemp("openapi") / "server.log"
    started = start_server(run, log, token=TOKEN)
    yield started
    started.process.terminate()
    started.process.wait(timeout=20)


@pytest.fixture(scope="module")
def document(server: Server) -> dict[str, Any]:
    return httpx.get(f"{server.base}/openapi.json").json()  # type: ignore[no-any-return]


def resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """``node`` with a local ``$ref`` followed (the document's own components)."""
    while "$ref" in node:
        target: Any = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def query_schemas(document: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    parameters = document["paths"][path][method]["parameters"]
    return {p["name"]: p["schema"] for p in parameters if p["in"] == "query"}


def check_documented(
    document: dict[str, Any], method: str, path: str, answer: httpx.Response
) -> None:
    """The answer's status is documented on the operation, with its headers and body schema."""
    operation = document["paths"][path][method.lower()]
    assert str(answer.status_code) in operation["responses"], (method, path, answer.status_code)
    documented = resolve(document, operation["responses"][str(answer.status_code)])
    for header, spec in documented.get("headers", {}).items():
        assert not spec.get("required") or header in answer.headers, (header, answer.headers)
    schema = documented["content"]["application/json"]["schema"]
    assert answer.headers["content-type"] == "application/json"
    validator(document, schema).validate(answer.json())


def validator(document: dict[str, Any], schema: dict[str, Any]) -> Any:
    """A JSON Schema validator for ``schema``, its references into the document resolved."""
    return jsonschema.Draft202012Validator({**schema, "components": document["components"]})


def test_schemathesis_finds_nothing(server: Server, tmp_path: Path) -> None:
    """All of Schemathesis' checks on every operation of the running server: no finding."""
    before = len(server.access_log())
    command = [
        *(sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis()"),
        *("--config-file", str(CONFIG), "run", f"{server.base}/openapi.json", "--checks", "all"),
        *("--header", f"Authorization: Bearer {TOKEN}", "--max-examples", str(EXAMPLES)),
        *("--seed", str(SEED), "--workers", "1", "--generation-database", "none", "--no-color"),
    ]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    report = done.stdout + done.stderr
    assert done.returncode == 0, report[-6000:]
    assert "No issues found" in report and str(CONFIG) in report, report
    generated = int(re.search(r"(\d+) generated", report).group(1))  # type: ignore[union-attr]
    requests = len(server.access_log()) - before
    print(f"schemathesis: {generated} test cases, {requests} requests to the server")
    assert generated >= 300 and requests >= generated
    statuses = {line["status"] for line in server.access_log()[before:]}
    assert {200, 401, 405, 422} <= statuses and not any(s >= 500 for s in statuses), statuses


def test_the_document_has_one_error_shape(document: dict[str, Any]) -> None:
    text = json.dumps(document)
    assert "HTTPValidationError" not in text and '"loc"' not in text
    for path, item in document["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            for status in ("400", "431", "500", "503"):  # any request can meet these
                assert status in responses, (method, path, status)
            for status, response in responses.items():
                if int(status) >= 400:
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (path, status)
            secured = path != "/v1/health"
            assert ("401" in responses) == secured == ("security" in operation), (path, method)
    ids = [op["operationId"] for item in document["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids)), ids
    recommend = document["paths"]["/v1/recommend"]["post"]["responses"]
    assert {"408", "413", "415", "422"} <= set(recommend)
    assert "strict=true" in recommend["422"]["description"]
    codes = query_schemas(document, "get", "/v1/codes")
    assert codes["q"]["maxLength"] == 100
    assert (codes["limit"]["minimum"], codes["limit"]["maximum"]) == (1, 200)
    assert codes["kind"]["enum"] == ["diagnosis", "procedure", "medication"]
    options = query_schemas(document, "post", "/v1/recommend")
    assert (options["top"]["minimum"], options["top"]["maximum"]) == (0, 10_000)
    assert options["ddi_safe"]["type"] == options["strict"]["type"] == "boolean"


def test_real_422s_match_the_documented_schema(server: Server, document: dict[str, Any]) -> None:
    codes = [
        httpx.get(f"{server.base}/v1/codes?q={'x' * 101}", headers=AUTH),
        httpx.get(f"{server.base}/v1/codes?kind=lab", headers=AUTH),
    ]
    url = f"{server.base}/v1/recommend"
    unknown = {"visits": [{"diagnoses": ["zz9"]}]}
    recommend = [
        httpx.post(f"{url}?top=-1", json=PATIENT, headers=AUTH),
        httpx.post(f"{url}?strict=true", json=unknown, headers=AUTH),
        httpx.post(url, json={"patients": [PATIENT, {"visits": []}]}, headers=AUTH),
        httpx.post(url, content=b"{", headers={**AUTH, "Content-Type": "application/json"}),
    ]
    for answer in codes:
        assert answer.status_code == 422, answer.text
        check_documented(document, "GET", "/v1/codes", answer)
    for answer in recommend:
        assert answer.status_code == 422, answer.text
        check_documented(document, "POST", "/v1/recommend", answer)
    assert recommend[2].json()["detail"][0]["patient"] == 1  # the optional field, checked too
    # The schema is not a rubber stamp: FastAPI's own shape fails it.
    fastapi_body = {"detail": [{"loc": ["query", "q"], "msg": "too long", "type": "string"}]}
    assert not validator(document, {"$ref": "#/components/schemas/Error"}).is_valid(fastapi_body)


def test_successes_match_the_documented_schemas(server: Server, document: dict[str, Any]) -> None:
    url = f"{server.base}/v1/recommend"
    batch = {"patients": [PATIENT, {"visits": [{"diagnoses": ["zz9"]}]}]}
    answers = [
        ("GET", "/v1/health", httpx.get(f"{server.base}/v1/health")),
        ("GET", "/v1/model", httpx.get(f"{server.base}/v1/model", headers=AUTH)),
        ("GET", "/v1/codes", httpx.get(f"{server.base}/v1/codes?q=d", headers=AUTH)),
        ("POST", "/v1/recommend", httpx.post(url, json=PATIENT, headers=AUTH)),
        ("POST", "/v1/recommend", httpx.post(f"{url}?ddi_safe=1&top=0", json=batch, headers=AUTH)),
    ]
    for method, path, response in answers:
        assert response.status_code == 200, response.text
        check_documented(document, method, path, response)
    results = answers[-1][2].json()["results"]
    assert "withheld_for_ddi" in results[0] and results[1]["unknown_count"] == 1
    # Not a rubber stamp either: a result without its ranked drugs fails the schema.
    one = answers[3][2].json()
    del one["ranked"]
    assert not validator(document, {"$ref": "#/components/schemas/Recommendation"}).is_valid(one)


def test_413_415_431_and_401_are_documented(server: Server, document: dict[str, Any]) -> None:
    url = f"{server.base}/v1/recommend"
    answers = [
        httpx.post(url, json={"patients": [PATIENT] * 1001}, headers=AUTH),  # too many patients
        httpx.post(
            url, content=json.dumps(PATIENT), headers={**AUTH, "Content-Type": "text/plain"}
        ),
        httpx.post(url, json=PATIENT, headers={**AUTH, "X-Big": "x" * 17_000}),
        httpx.post(url, json=PATIENT),
    ]
    assert [a.status_code for a in answers] == [413, 415, 431, 401]
    for answer in answers:
        check_documented(document, "POST", "/v1/recommend", answer)
    big = httpx.get(f"{server.base}/v1/health", headers={"X-Big": "x" * 17_000})
    assert big.status_code == 431
    check_documented(document, "GET", "/v1/health", big)


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/v1/health", "GET, HEAD"),
        ("DELETE", "/v1/health", "GET, HEAD"),
        ("PUT", "/v1/model", "GET"),
        ("POST", "/v1/codes", "GET"),
        ("GET", "/v1/recommend", "POST"),
        ("PATCH", "/v1/recommend", "POST"),
    ],
)
def test_other_methods_are_405_before_any_body_check(
    server: Server, method: str, path: str, allow: str
) -> None:
    # No Content-Type and a body that is not JSON: still 405, not 415 or 422.
    answer = httpx.request(method, f"{server.base}{path}", content=b"<x/>", headers=AUTH)
    assert answer.status_code == 405 and answer.headers["allow"] == allow, answer.text
    assert answer.json() == {"detail": [{"path": "url", "message": "method not allowed"}]}


def test_routes_added_later_are_documented_and_routed_alike(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The mechanism is the app's, not a list of today's routes: a router included after
    create_app (as CDS Hooks will be) gets the statuses, the error shape, the token and 405."""
    guard = create_app(run_dir=trained_run(tmp_path_factory), config=ServeConfig(token=TOKEN))
    router = APIRouter()

    @router.post("/v1/extra/{name}")
    def extra(name: str, level: float = Query(0.5, gt=0, lt=1)) -> dict[str, str]:
        return {"name": name}

    @router.api_route("/v1/both", methods=["GET", "DELETE"])
    def both() -> dict[str, str]:
        return {}

    guard.app.include_router(router)
    with TestClient(guard, base_url="http://localhost") as http, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FastAPI warns of the operationId both methods share
        document = http.get("/openapi.json").json()
        ids = {m: op["operationId"] for m, op in document["paths"]["/v1/both"].items()}
        assert ids == {"get": "both_v1_both_get", "delete": "both_v1_both_delete"}
        both_put = http.put("/v1/both", headers=AUTH)
        assert both_put.status_code == 405 and both_put.headers["allow"] == "DELETE, GET"
        operation = document["paths"]["/v1/extra/{name}"]["post"]
        expected = {"200", "400", "401", "404", "408", "413", "415", "422", "431", "500", "503"}
        assert set(operation["responses"]) == expected and operation["security"]
        level = query_schemas(document, "post", "/v1/extra/{name}")["level"]
        assert (level["exclusiveMinimum"], level["exclusiveMaximum"]) == (0, 1)
        json_type = {**AUTH, "Content-Type": "application/json"}
        bad = http.post("/v1/extra/a?level=2", headers=json_type)
        assert bad.status_code == 422
        check_documented(document, "POST", "/v1/extra/{name}", bad)
        put = http.put("/v1/extra/a", headers=AUTH)
        assert put.status_code == 405 and put.headers["allow"] == "POST"
