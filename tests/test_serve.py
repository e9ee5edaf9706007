"""The HTTP service on a real trained run: valid, invalid, oversized, unauthorised, fuzzed."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pickle
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leader.recommend import Recommender, load_model
from leader.serve import ServeConfig, create_app
from test_serve_fixtures import eager_copy, trained_run

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON_TYPE = {"Content-Type": "application/json"}
PATIENT = {
    "id": "p1",
    "profile": {"gender": "F"},
    "visits": [
        {"diagnoses": ["d1", "d2"], "procedures": ["x1"], "medications": ["m1", "m2"]},
        {"diagnoses": ["d1", "zz9"], "procedures": ["x1", "x2"]},
    ],
}


@pytest.fixture()
def student_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_run(tmp_path_factory)


@pytest.fixture()
def eager_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return eager_copy(tmp_path_factory)


def local(app: Any, **kwargs: Any) -> TestClient:
    """A test client that names a loopback host (without a token, others are refused)."""
    return TestClient(app, base_url="http://localhost", **kwargs)


@pytest.fixture()
def client(student_run: Path) -> Iterator[TestClient]:
    app = create_app(run_dir=student_run, config=ServeConfig(token=TOKEN, max_body=20_000))
    with TestClient(app) as test_client:
        yield test_client


def test_health_model_and_codes(client: TestClient, student_run: Path) -> None:
    assert client.get("/v1/health").json() == {"status": "ok"}  # open without the token
    info = client.get("/v1/model", headers=AUTH).json()
    assert info["vocabulary"] == {"diagnosis": 5, "procedure": 3, "medication": 5}
    assert info["ddi"] == {"source": "test", "pairs": 2}
    metrics = json.loads((student_run / "metrics.json").read_text())
    assert info["metrics"]["threshold"] == metrics["threshold"] == info["threshold"]
    assert info["run"] == student_run.name and info["version"]
    found = client.get("/v1/codes", params={"kind": "diagnosis", "q": "heart"}, headers=AUTH)
    assert found.json()["codes"] == [{"code": "d4", "name": "Heart failure"}]
    by_prefix = client.get("/v1/codes", params={"kind": "procedure", "q": "x"}, headers=AUTH)
    assert [c["code"] for c in by_prefix.json()["codes"]] == ["x1", "x2", "x3"]
    assert client.get("/v1/codes?kind=lab", headers=AUTH).status_code == 422


def test_recommend_one_and_many_match_the_library(client: TestClient, student_run: Path) -> None:
    expected = Recommender(load_model(student_run)).recommend([PATIENT], top=20)[0]
    one = client.post("/v1/recommend", json=PATIENT, headers=AUTH)
    assert one.status_code == 200 and one.headers["content-type"] == "application/json"
    assert one.json() == expected
    assert one.json()["unknown_codes"] == [{"visit": 1, "kind": "diagnosis", "code": "zz9"}]
    other = {"visits": [{"diagnoses": ["d4"], "procedures": ["x3"]}]}
    many = client.post("/v1/recommend?top=2", json={"patients": [PATIENT, other]}, headers=AUTH)
    results = many.json()["results"]
    assert [r["index"] for r in results] == [0, 1] and all(len(r["ranked"]) == 2 for r in results)
    assert results[0]["ranked"] == expected["ranked"][:2]


def test_ddi_warnings_and_safe_mode_over_http(eager_run: Path) -> None:
    with local(create_app(run_dir=eager_run)) as http:
        plain = http.post("/v1/recommend", json=PATIENT).json()
        pairs = {tuple(d["code"] for d in w["drugs"]) for w in plain["ddi_warnings"]}
        assert pairs == {("m1", "m4"), ("m2", "m5")}
        safe = http.post("/v1/recommend?ddi_safe=true", json=PATIENT).json()
        assert safe["ddi_safe"] is True and "withheld_for_ddi" in safe
        assert len(safe["ddi_warnings"]) < 2 or not safe["withheld_for_ddi"]


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"visits": [{"diagnoses": ["d1", 3]}]}, "$.visits[0].diagnoses[1]"),
        ({"visits": [{"diagnoses": ["d1"], "procedure": []}]}, "$.visits[0]"),
        ({"patients": [PATIENT, {"visits": [{}]}]}, "$.patients[1].visits[0]"),
        ({"patients": []}, "$.patients"),
        ({"patients": [PATIENT], "extra": 1}, "$"),
        ("just a string", "$"),
    ],
)
def test_invalid_input_is_422_with_the_path(client: TestClient, body: Any, path: str) -> None:
    response = client.post("/v1/recommend", json=body, headers=AUTH)
    assert response.status_code == 422
    assert response.json()["detail"][0]["path"] == path


def test_bad_json_strict_and_batch_limit(student_run: Path) -> None:
    app = create_app(run_dir=student_run, config=ServeConfig(max_batch=3))
    with local(app) as http:
        broken = http.post("/v1/recommend", content=b'{"visits": [', headers=JSON_TYPE)
        assert (
            broken.status_code == 422 and "not valid JSON" in broken.json()["detail"][0]["message"]
        )
        strict = http.post("/v1/recommend?strict=true", json=PATIENT)
        assert strict.status_code == 422
        assert strict.json()["detail"][0]["path"] == "$.visits[1].diagnoses"
        assert "zz9" in strict.json()["detail"][0]["message"]
        many = http.post("/v1/recommend", json={"patients": [PATIENT] * 4})
        assert many.status_code == 413 and "at most 3" in many.json()["detail"][0]["message"]


def test_the_documented_route_answers_like_the_fast_path(student_run: Path) -> None:
    guarded = create_app(run_dir=student_run)
    with local(guarded) as fast, local(guarded.app) as routed:
        for query in ("", "?top=3&ddi_safe=true"):
            a = fast.post("/v1/recommend" + query, json=PATIENT)
            b = routed.post("/v1/recommend" + query, json=PATIENT)
            assert a.status_code == b.status_code == 200 and a.json() == b.json()
        for query in ("?top=-1", "?top=x", "?ddi_safe=maybe", "?strict=2"):
            assert fast.post("/v1/recommend" + query, json=PATIENT).status_code == 422, query
            assert routed.post("/v1/recommend" + query, json=PATIENT).status_code == 422, query
        bad = fast.post("/v1/recommend?top=99999", json=PATIENT).json()
        assert (
            bad["detail"][0]["path"] == "query.top" and "top=99999" in bad["detail"][0]["message"]
        )


def test_oversized_bodies_are_413_before_parsing(client: TestClient) -> None:
    big = {"visits": [{"diagnoses": ["d1"] * 5000}]}
    declared = client.post("/v1/recommend", json=big, headers=AUTH)
    assert declared.status_code == 413 and "20000 bytes" in declared.json()["detail"][0]["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer
        yield b'{"visits": [{"diagnoses": ['
        for _ in range(5000):
            yield b'"d1",'
        yield b'"d1"]}]}'

    chunked = client.post("/v1/recommend", content=chunks(), headers={**AUTH, **JSON_TYPE})
    assert chunked.status_code == 413


def test_token_is_required_except_for_health_and_page(client: TestClient) -> None:
    assert client.post("/v1/recommend", json=PATIENT).status_code == 401
    wrong = client.post("/v1/recommend", json=PATIENT, headers={"Authorization": "Bearer no"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"].startswith("Bearer")
    assert client.get("/v1/model").status_code == 401
    assert client.get("/v1/codes?q=d").status_code == 401
    assert client.get("/v1/health").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "not medical advice" in page.text
    assert client.get("/static/app.js").status_code == 200
    assert "/v1/recommend" in client.get("/openapi.json").json()["paths"]


def test_pages_and_docs_work_offline(client: TestClient) -> None:
    for path in ("/", "/docs", "/static/app.js", "/static/docs.js", "/static/style.css"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert "https://" not in response.text and "http://" not in response.text, path
    assert 'src="/static/docs.js"' in client.get("/docs").text
    assert client.get("/redoc").status_code == 404


def test_access_log_is_one_json_line_per_request(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="leader.access"):
        client.post("/v1/recommend", json=PATIENT, headers=AUTH)
        client.get("/v1/model")
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "leader.access"]
    assert [(x["method"], x["path"], x["status"]) for x in lines] == [
        ("POST", "/v1/recommend", 200),
        ("GET", "/v1/model", 401),
    ]
    assert all(isinstance(x["ms"], float) and x["ms"] >= 0 for x in lines)


def test_concurrent_requests_are_batched(student_run: Path) -> None:
    app = create_app(run_dir=student_run, config=ServeConfig(access_log=False))
    patients = [
        {"id": i, "visits": [{"diagnoses": [f"d{1 + i % 5}"], "procedures": [f"x{1 + i % 3}"]}]}
        for i in range(40)
    ]

    async def drive() -> list[dict[str, Any]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            replies = await asyncio.gather(*(http.post("/v1/recommend", json=p) for p in patients))
        return [r.json() for r in replies]

    answers = asyncio.run(drive())
    batcher = app.app.state.batcher  # type: ignore[attr-defined]
    assert batcher.calls < len(patients)  # pooled into fewer model calls
    one_by_one = Recommender(load_model(student_run)).recommend(patients)
    for got, want in zip(answers, one_by_one, strict=True):
        assert got["id"] == want["id"]
        for a, b in zip(got["ranked"], want["ranked"], strict=True):
            assert a["code"] == b["code"] or a["probability"] == pytest.approx(b["probability"])
            assert a["probability"] == pytest.approx(b["probability"], abs=2e-4)


def test_a_model_failure_is_a_logged_500(
    student_run: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(run_dir=student_run, config=ServeConfig(batching=False))
    recommender = app.app.state.recommender  # type: ignore[attr-defined]

    def broken(samples: object) -> None:
        raise RuntimeError("model exploded")

    monkeypatch.setattr(recommender.model, "predict_proba", broken)
    with local(app) as http, caplog.at_level(logging.ERROR, logger="leader.serve"):
        response = http.post("/v1/recommend", json=PATIENT)
        assert http.get("/v1/health").status_code == 200  # still serving
    assert response.status_code == 500 and "server log" in response.json()["detail"][0]["message"]
    assert "model exploded" in caplog.text


def test_serving_never_unpickles_nor_writes(
    student_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("something tried to unpickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    before = {p: p.stat().st_mtime_ns for p in student_run.rglob("*")}
    monkeypatch.chdir(tmp_path)
    with local(create_app(run_dir=student_run)) as http:
        assert http.post("/v1/recommend", json=PATIENT).status_code == 200
        assert http.get("/").status_code == 200
    assert {p: p.stat().st_mtime_ns for p in student_run.rglob("*")} == before
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ issue 12
def assert_error_shape(response: httpx.Response) -> None:
    """The one error shape: {"detail": [{"path": str, "message": str, ["patient": int]}]}."""
    assert response.headers["content-type"] == "application/json", response.headers
    body = response.json()
    assert list(body) == ["detail"] and isinstance(body["detail"], list) and body["detail"]
    for item in body["detail"]:
        assert set(item) in ({"path", "message"}, {"path", "message", "patient"}), item
        assert isinstance(item["path"], str) and isinstance(item["message"], str)


def test_bearer_scheme_is_case_insensitive(client: TestClient) -> None:
    for scheme in ("Bearer", "bearer", "BEARER", "bEaReR"):
        reply = client.post(
            "/v1/recommend", json=PATIENT, headers={"Authorization": f"{scheme} {TOKEN}"}
        )
        assert reply.status_code == 200, scheme
    for header in (f"Basic {TOKEN}", f"Bearer{TOKEN}", f"Bearer {TOKEN}x", TOKEN, "Bearer "):
        reply = client.post("/v1/recommend", json=PATIENT, headers={"Authorization": header})
        assert reply.status_code == 401, header
        assert_error_shape(reply)


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/json", 200),
        ("application/json; charset=utf-8", 200),
        ("Application/JSON;charset=UTF-8", 200),
        ("text/plain", 415),  # a cross-site form or fetch needs no preflight for this
        ("application/x-www-form-urlencoded", 415),
        ("multipart/form-data; boundary=x", 415),
        ("application/json; charset=latin-1", 415),
        ("application/jsonx", 415),
        (None, 415),
    ],
)
def test_only_json_bodies_are_accepted(
    client: TestClient, content_type: str | None, status: int
) -> None:
    headers = {**AUTH, **({"Content-Type": content_type} if content_type else {})}
    reply = client.post("/v1/recommend", content=json.dumps(PATIENT).encode(), headers=headers)
    assert reply.status_code == status
    if status != 200:
        assert_error_shape(reply)


def test_host_header_is_checked_without_a_token(student_run: Path) -> None:
    app = create_app(run_dir=student_run, config=ServeConfig(allowed_hosts=["leader.lan"]))
    for base, status in [
        ("http://localhost:8000", 200),
        ("http://127.0.0.1:8000", 200),
        ("http://[::1]:8000", 200),
        ("http://leader.lan", 200),
        ("http://attacker.example", 400),  # DNS rebinding: the page's own name
        ("http://127.0.0.1.attacker.example:8000", 400),
    ]:
        with TestClient(app, base_url=base) as http:
            reply = http.get("/v1/model")
            assert reply.status_code == status, base
            if status == 400:
                assert_error_shape(reply)
                assert reply.json()["detail"][0]["path"] == "header.host"
    with_token = create_app(run_dir=student_run, config=ServeConfig(token=TOKEN))
    with TestClient(with_token, base_url="http://any.example") as http:  # the token guards it
        assert http.get("/v1/model", headers=AUTH).status_code == 200


def test_security_headers_on_every_answer(client: TestClient) -> None:
    answers = [
        client.get("/"),
        client.get("/docs"),
        client.get("/static/app.js"),
        client.get("/v1/health"),
        client.post("/v1/recommend", json=PATIENT, headers=AUTH),
        client.post("/v1/recommend", json={"visits": 1}, headers=AUTH),
        client.get("/v1/model"),  # 401
        client.get("/nowhere"),
    ]
    for reply in answers:
        assert reply.headers["x-content-type-options"] == "nosniff"
        assert reply.headers["cache-control"] == "no-store"
        assert reply.headers["cross-origin-resource-policy"] == "same-origin"
        csp = reply.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe" not in csp and "access-control-allow-origin" not in reply.headers
        page = not reply.url.path.startswith("/v1/")
        assert (reply.headers.get("x-frame-options") == "DENY") == page, reply.url
        assert ("script-src 'self'" in csp) == page
        assert (reply.headers.get("referrer-policy") == "no-referrer") == page
    for page in ("/", "/docs"):  # nothing inline that the CSP would block
        text = client.get(page).text
        assert "<style" not in text and " style=" not in text and "<script>" not in text
        assert " on" not in text.replace(" one", "").split("<body", 1)[1].split(">")[0]


def test_framework_errors_have_the_one_shape_and_echo_nothing(client: TestClient) -> None:
    secret = "x" * 150 + "PAYLOAD"
    for reply in [
        client.get("/v1/codes", params={"kind": "lab" + secret}, headers=AUTH),
        client.get("/v1/codes", params={"q": secret * 3}, headers=AUTH),
        client.get("/v1/codes", params={"limit": "many"}, headers=AUTH),
        client.get("/nowhere"),
        client.put("/v1/health", json={}),
        client.post("/", json={}),
        client.post("/v1/recommend?top=" + secret, json=PATIENT, headers=AUTH),
        client.post("/v1/recommend", json={"patients": [PATIENT], secret: 1}, headers=AUTH),
    ]:
        assert 400 <= reply.status_code < 500, reply.text
        assert_error_shape(reply)
        assert "PAYLOAD" not in reply.text, reply.text
    path = client.get("/v1/codes", params={"limit": "many"}, headers=AUTH).json()["detail"][0]
    assert path["path"] == "query.limit"


def test_head_health_and_page(client: TestClient) -> None:
    assert client.head("/v1/health").status_code == 200
    assert client.head("/").status_code == 200


def test_malformed_json_is_422_never_500(client: TestClient) -> None:
    deep = b"[" * 5_000 + b"]" * 5_000
    cases = {
        "nested": (deep, "$"),
        "nested object": (b'{"visits":' + b"[" * 900 + b"]" * 900 + b"}", "$.visits"),
        "nested code": (
            b'{"visits":[{"diagnoses":[' + b"[" * 900 + b"]" * 900 + b"]}]}",
            "$.visits[0].diagnoses[0]",
        ),
        "big int id": (b'{"id": ' + b"9" * 4400 + b', "visits": [{"diagnoses": []}]}', "$"),
        "int id out of range": (
            b'{"id": ' + b"9" * 20 + b', "visits": [{"diagnoses": []}]}',
            "$.id",
        ),
        "lone surrogate code": (
            b'{"visits": [{"diagnoses": ["\\ud800"]}]}',
            "$.visits[0].diagnoses[0]",
        ),
        "lone surrogate id": (b'{"id": "a\\udfff", "visits": [{"diagnoses": []}]}', "$.id"),
        "lone surrogate key": (b'{"visits": [{"diagnoses": []}], "\\ud800": 1}', "$"),
        "raw surrogate bytes": (b'{"id": "\xed\xa0\x80", "visits": [{"diagnoses": []}]}', "$"),
        "latin-1": (b'{"id": "caf\xe9", "visits": [{"diagnoses": []}]}', "$"),
        "NaN": (b'{"id": NaN, "visits": [{"diagnoses": []}]}', "$"),
        "empty": (b"", "$"),
    }
    for name, (body, path) in cases.items():
        reply = client.post("/v1/recommend", content=body, headers={**AUTH, **JSON_TYPE})
        assert reply.status_code == 422, (name, reply.text[:300])
        assert_error_shape(reply)
        assert reply.json()["detail"][0]["path"].startswith(path), (name, reply.text[:300])
    pair = b'{"id": "\\ud83d\\ude00", "visits": [{"diagnoses": ["d1"]}]}'  # a valid pair
    reply = client.post("/v1/recommend", content=pair, headers={**AUTH, **JSON_TYPE})
    assert reply.status_code == 200 and reply.json()["id"] == "\U0001f600"


def test_work_is_bounded_by_the_request_not_its_errors(student_run: Path) -> None:
    config = ServeConfig(access_log=False, max_codes=60_000)
    with local(create_app(run_dir=student_run, config=config)) as http:
        # 400 visits x 100 integer "codes": 40,000 schema errors, 10 are reported
        body = {"visits": [{"diagnoses": [1] * 100} for _ in range(400)]}
        start = time.process_time()
        reply = http.post("/v1/recommend", json=body)
        assert reply.status_code == 422 and len(reply.json()["detail"]) == 10
        assert time.process_time() - start < 2.0
        # over the code cap: refused before validation
        many = {"visits": [{"diagnoses": [1] * 1000} for _ in range(61)]}
        over = http.post("/v1/recommend", json=many)
        assert over.status_code == 413 and "at most 60000" in over.json()["detail"][0]["message"]


def test_unknown_codes_are_counted_not_all_echoed(client: TestClient) -> None:
    codes = [f"u{i}" for i in range(500)]
    body = {"visits": [{"diagnoses": ["d1", *codes], "procedures": ["x9"]}]}
    reply = client.post("/v1/recommend", json=body, headers=AUTH).json()
    assert reply["unknown_count"] == 501 and len(reply["unknown_codes"]) == 20
    assert reply["unknown_codes"][0] == {"visit": 0, "kind": "diagnosis", "code": "u0"}


def test_large_bodies_and_batches_answer_like_small_ones(student_run: Path) -> None:
    """Over INLINE_BODY / INLINE_PATIENTS the work moves to a thread; answers are the same."""
    from leader.serve import INLINE_BODY, INLINE_PATIENTS

    padded = json.dumps(PATIENT).encode() + b" " * INLINE_BODY  # JSON allows the spaces
    patients = [PATIENT] * (INLINE_PATIENTS + 3)
    config = ServeConfig(access_log=False, batching=False)
    with local(create_app(run_dir=student_run, config=config)) as http:
        small = http.post("/v1/recommend", json=PATIENT).json()
        big = http.post("/v1/recommend", content=padded, headers=JSON_TYPE).json()
        assert big["ranked"] == small["ranked"]
        many = http.post("/v1/recommend", json={"patients": patients}).json()["results"]
        assert [r["ranked"] for r in many] == [small["ranked"]] * len(patients)
        assert [r["index"] for r in many] == list(range(len(patients)))


def test_addresses_and_urls() -> None:
    from leader.serve import display_url, is_loopback

    assert display_url("::1", 8000) == "http://[::1]:8000/"
    assert display_url("::", 80) == "http://[::]:80/"
    assert display_url("127.0.0.1", 8000) == "http://127.0.0.1:8000/"
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "localhost", "[::1]"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "example.org"))


# ------------------------------------------------------------------------------ fuzz
CODES = st.sampled_from(["d1", "d2", "d4", "x1", "x3", "m1", "m5", "zz", ""]) | st.text(max_size=8)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
VISIT = st.fixed_dictionaries(
    {"diagnoses": st.lists(CODES, max_size=6) | JSON},
    optional={
        "procedures": st.lists(CODES, max_size=4) | JSON,
        "medications": st.lists(CODES, max_size=4),
        "id": st.integers() | st.text(max_size=5) | st.none(),
        "time": st.text(max_size=5) | st.integers(),
    },
)
PATIENTS = st.fixed_dictionaries(
    {"visits": st.lists(VISIT, max_size=4) | JSON},
    optional={
        "id": st.integers() | st.text(max_size=5) | JSON,
        "profile": st.dictionaries(st.text(max_size=6), st.text(max_size=6) | JSON, max_size=3),
    },
)
DOCUMENTS = (
    PATIENTS | st.fixed_dictionaries({"patients": st.lists(PATIENTS, max_size=3) | JSON}) | JSON
)


def test_fuzzed_input_never_gets_a_500(student_run: Path) -> None:
    app = create_app(run_dir=student_run, config=ServeConfig(access_log=False))
    with local(app, raise_server_exceptions=False) as http:

        @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
        @given(
            document=DOCUMENTS,
            query=st.sampled_from(["", "?ddi_safe=true", "?strict=1&top=0", "?top=-1"]),
        )
        def check(document: Any, query: str) -> None:
            body = json.dumps(document).encode()
            response = http.post("/v1/recommend" + query, content=body, headers=JSON_TYPE)
            assert response.status_code in (200, 413, 422), (response.status_code, response.text)
            if response.status_code != 200:
                assert_error_shape(response)

        check()

        @settings(max_examples=60, deadline=None)
        @given(raw=st.binary(max_size=200))
        def check_bytes(raw: bytes) -> None:
            response = http.post("/v1/recommend", content=raw, headers=JSON_TYPE)
            assert response.status_code in (200, 422)

        check_bytes()


# ------------------------------------------------------------------------------ CLI
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_cli_serve_on_loopback_with_token(student_run: Path) -> None:
    port = _free_port()
    env = {**os.environ, "LEADER_TOKEN": TOKEN}
    command = [
        sys.executable,
        "-m",
        "leader",
        "serve",
        "--run",
        str(student_run),
        "--port",
        str(port),
    ]
    server = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        assert httpx.post(f"{base}/v1/recommend", json=PATIENT).status_code == 401
        reply = httpx.post(f"{base}/v1/recommend", json=PATIENT, headers=AUTH)
        assert reply.status_code == 200 and reply.json()["id"] == "p1"
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=20)
    logged = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert {"method": "POST", "path": "/v1/recommend", "status": 200}.items() <= logged[-1].items()
    assert f"http://127.0.0.1:{port}/" in stderr


def test_load_benchmark_runs_clean(student_run: Path) -> None:
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "serve.py"
    command = [sys.executable, str(script), "--run", str(student_run), "--requests", "60"]
    command += ["--clients", "5", "--warmup", "0", "--distinct", "10", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["requests"] == 60 and result["errors"] == 0, result
    assert result["requests_per_s"] > 0 and 0 < result["p50_ms"] <= result["p99_ms"]


def test_absurd_content_length_is_413_not_500(student_run: Path) -> None:
    app = create_app(run_dir=student_run, config=ServeConfig(access_log=False))
    sent: list[dict[str, Any]] = []
    headers = [(b"host", b"localhost"), (b"content-type", b"application/json")]

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    for length, status in ((b"9" * 5000, 413), (b"-1", 400), (b"1e3", 400)):
        sent.clear()
        scope = {"type": "http", "method": "POST", "path": "/v1/recommend", "query_string": b""}
        scope["headers"] = [*headers, (b"content-length", length)]
        asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
        assert sent[0]["status"] == status, length


def test_a_large_request_is_predicted_in_turns(student_run: Path) -> None:
    """Beyond max_model_batch patients, model calls are split so other requests come between."""
    config = ServeConfig(access_log=False, max_model_batch=4)
    app = create_app(run_dir=student_run, config=config)
    patients = [
        {"id": i, "visits": [{"diagnoses": [f"d{1 + i % 5}"], "procedures": [f"x{1 + i % 3}"]}]}
        for i in range(10)
    ]
    with local(app) as http:
        results = http.post("/v1/recommend", json={"patients": patients}).json()["results"]
    batcher = app.app.state.batcher  # type: ignore[attr-defined]
    assert batcher.calls == 3  # 4 + 4 + 2
    expected = Recommender(load_model(student_run)).recommend(patients)
    for got, want in zip(results, expected, strict=True):
        assert [d["code"] for d in got["ranked"]] == [d["code"] for d in want["ranked"]]
