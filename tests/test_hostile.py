"""Hostile input against the real `leader serve` process (issue 12).

A uvicorn server in a subprocess, on a free loopback port, with a token and short timeouts,
gets the probes of issue 12 and more: malformed bodies and headers, oversized and deeply
nested documents, lone surrogates, huge integers, path traversal, slow and abandoned
clients, too many connections. Nothing may answer 5xx; every error a JSON body can carry
has the one shape of ``/v1/recommend``; ``/v1/health`` keeps answering while the worst
requests run, and the server's peak memory stays within twice its idle size.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from test_serve_fixtures import Server, free_port, memory_kb, start_server, trained_run

TOKEN = "hostile-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON_TYPE = {"Content-Type": "application/json"}
PATIENT = {"id": "p1", "visits": [{"diagnoses": ["d1", "d2"], "procedures": ["x1"]}]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    run = trained_run(tmp_path_factory)
    log = tmp_path_factory.mktemp("hostile") / "server.log"
    limits = ["--body-timeout", "1", "--head-timeout", "1", "--keep-alive", "1"]
    started = start_server(run, log, *limits, "--max-connections", "24", token=TOKEN)
    yield started
    started.process.terminate()
    started.process.wait(timeout=20)


def assert_error_shape(response: httpx.Response) -> None:
    assert response.headers.get("content-type") == "application/json", response.text[:200]
    body = response.json()
    assert list(body) == ["detail"] and body["detail"], body
    for item in body["detail"]:
        assert set(item) in ({"path", "message"}, {"path", "message", "patient"}), item


def raw_exchange(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes, read until the server closes (or the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
    return b"".join(chunks)


def compact(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


# ------------------------------------------------------------------------------ corpus
BODIES: dict[str, bytes] = {
    "980 KB of integer codes": compact({"visits": [{"diagnoses": [1] * 1000}] * 490}),
    "330 visits x 1001 empty codes": compact({"visits": [{"diagnoses": [""] * 1001}] * 330}),
    "nesting 100,000 deep": b"[" * 100_000 + b"]" * 100_000,
    "nesting in a code": b'{"visits":[{"diagnoses":[' + b"[" * 950 + b"]" * 950 + b"]}]}",
    "4,400-digit id": b'{"id":' + b"9" * 4400 + b',"visits":[{"diagnoses":[]}]}',
    "4,400-digit code": b'{"visits":[{"diagnoses":[' + b"1" * 4400 + b"]}]}",
    "1e999 id": b'{"id":1e999,"visits":[{"diagnoses":[]}]}',
    "lone surrogate code": b'{"visits":[{"diagnoses":["\\ud800"]}]}',
    "lone surrogate id": b'{"id":"\\udfff","visits":[{"diagnoses":["d1"]}]}',
    "lone surrogate profile key": b'{"profile":{"\\ud800":"x"},"visits":[{"diagnoses":[]}]}',
    "surrogate bytes": b'{"id":"\xed\xa0\x80","visits":[{"diagnoses":[]}]}',
    "invalid UTF-8": b'{"id":"\xff\xfe","visits":[{"diagnoses":[]}]}',
    "UTF-16": json.dumps(PATIENT).encode("utf-16"),
    "NaN": b'{"id":NaN,"visits":[{"diagnoses":[]}]}',
    "empty": b"",
    "null": b"null",
    "whitespace": b" \n\t ",
    "truncated": compact(PATIENT)[:-3],
    "duplicate keys": b'{"visits":[],"visits":[{"diagnoses":["d1"]}]}',
    "empty batch": b'{"patients":[]}',
    "1,001 patients": compact({"patients": [PATIENT] * 1001}),
    "patients not a list": b'{"patients":{"0":{}}}',
    "5,000 unknown codes": compact({"visits": [{"diagnoses": [f"u{i}" for i in range(5000)]}]}),
    "50,001 codes": compact(
        {"visits": [{"diagnoses": ["d1"] * 1000}] * 50 + [{"diagnoses": ["d1"]}]}
    ),
    "5,001 visits": compact({"patients": [{"visits": [{"diagnoses": []}] * 500}] * 10 + [PATIENT]}),
    "commas in strings": compact({"visits": [{"diagnoses": ["," * 64] * 1000}] * 10}),
    "NUL bytes": b"\x00" * 1000,
}


@pytest.mark.parametrize("name", list(BODIES))
def test_malformed_bodies_are_4xx_in_the_one_shape(server: Server, name: str) -> None:
    body = BODIES[name]
    for query in ("", "?top=0&ddi_safe=true&strict=true"):
        reply = httpx.post(
            f"{server.base}/v1/recommend{query}",
            content=body,
            headers={**AUTH, **JSON_TYPE},
            timeout=30,
        )
        if name in ("duplicate keys",):  # the last key wins (RFC 8259 leaves it open)
            assert reply.status_code == 200
            continue
        assert 400 <= reply.status_code < 500, (name, reply.status_code, reply.text[:300])
        assert_error_shape(reply)
        assert len(reply.content) < 20_000, (name, len(reply.content))


def test_unknown_codes_do_not_inflate_the_answer(server: Server) -> None:
    unknown = [{"diagnoses": [f"u{v}-{i}" for i in range(1000)]} for v in range(5)]
    body = compact({"visits": [*unknown, {"diagnoses": ["d1"]}]})
    reply = httpx.post(f"{server.base}/v1/recommend", content=body, headers={**AUTH, **JSON_TYPE})
    assert reply.status_code == 200 and len(reply.content) < len(body) / 5
    assert reply.json()["unknown_count"] == 5000 and len(reply.json()["unknown_codes"]) == 20


REQUESTS: list[tuple[str, str, dict[str, str], bytes | None, set[int]]] = [
    ("GET", "/static/../serve.py", {}, None, {404}),
    ("GET", "/static/%2e%2e/serve.py", {}, None, {404}),
    ("GET", "/static/..%2fserve.py", {}, None, {404}),
    ("GET", "//etc/passwd", {}, None, {404}),
    ("GET", "/static/", {}, None, {404}),
    ("OPTIONS", "/v1/recommend", {**AUTH, "Origin": "http://evil.example"}, None, {405}),
    ("PUT", "/v1/recommend", {**AUTH, **JSON_TYPE}, b"{}", {405}),
    ("DELETE", "/v1/health", {}, None, {405}),
    ("POST", "/v1/recommend", JSON_TYPE, compact(PATIENT), {401}),
    (
        "POST",
        "/v1/recommend",
        {"Authorization": f"bearer {TOKEN}", **JSON_TYPE},
        compact(PATIENT),
        {200},
    ),
    (
        "POST",
        "/v1/recommend",
        {"Authorization": f"Basic {TOKEN}", **JSON_TYPE},
        compact(PATIENT),
        {401},
    ),
    ("POST", "/v1/recommend", {**AUTH, "Content-Type": "text/plain"}, compact(PATIENT), {415}),
    ("POST", "/v1/recommend", AUTH, compact(PATIENT), {415}),
    ("POST", "/v1/recommend?top=-1", {**AUTH, **JSON_TYPE}, compact(PATIENT), {422}),
    ("POST", "/v1/recommend?top=" + "9" * 5000, {**AUTH, **JSON_TYPE}, compact(PATIENT), {422}),
    ("POST", "/v1/recommend?strict=%ud800", {**AUTH, **JSON_TYPE}, compact(PATIENT), {422}),
    ("POST", "/v1/recommend?top=%ff%fe", {**AUTH, **JSON_TYPE}, compact(PATIENT), {422}),
    ("GET", "/v1/codes?kind=" + "x" * 5000, AUTH, None, {422}),
    ("GET", "/v1/codes?q=%ff%fe%ed%a0%80", AUTH, None, {200}),
    ("GET", "/v1/codes?limit=99999999999999999999999", AUTH, None, {422}),
    ("GET", "/v1/codes?q=\\ud800", AUTH, None, {200}),
    ("HEAD", "/v1/health", {}, None, {200}),
    ("GET", "/v1/model", {"Authorization": "Bearer " + "x" * 8000}, None, {401}),
]


@pytest.mark.parametrize(("method", "path", "headers", "body", "expected"), REQUESTS)
def test_hostile_requests(
    server: Server,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes | None,
    expected: set[int],
) -> None:
    reply = httpx.request(method, server.base + path, headers=headers, content=body, timeout=30)
    assert reply.status_code in expected, (method, path, reply.status_code, reply.text[:300])
    assert "access-control-allow-origin" not in reply.headers
    assert reply.headers["x-content-type-options"] == "nosniff"
    if reply.status_code >= 400 and method != "HEAD":
        assert_error_shape(reply)


@pytest.mark.parametrize(
    "data",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20_000 + b"\r\n\r\n",
        b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + TOKEN.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40),  # a TLS hello
        b"GET /\xff HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /%ff%00 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /static/%00 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /static/..%5c..%5cetc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/codes?q=%00&kind=diagnosis HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n",
        b"GET /v1/health HTTP/1.0\r\n\r\n",
        b"GET http://evil.example/v1/model HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET * HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/model HTTP/1.1\r\nHost: x\r\nAuthorization: \xff\xfe\r\n\r\n",
        b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Type: \xff\r\n"
        b"Content-Length: 2\r\n\r\n{}",
    ],
)
def test_malformed_http_never_gets_a_5xx(server: Server, data: bytes) -> None:
    answer = raw_exchange(server.port, data)
    if answer:
        status = int(answer.split(b" ", 2)[1])
        assert status < 500, answer[:300]  # 200 for the well-formed odd ones (HTTP/1.0, %00)
    assert httpx.get(f"{server.base}/v1/health").status_code == 200


# ------------------------------------------------------------------------------ slow clients
def test_slow_headers_and_idle_connections_are_closed(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as idle:
        start = time.monotonic()
        assert idle.recv(100) == b""  # closed by the server
        assert time.monotonic() - start < 5
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as slow:
        slow.sendall(b"GET /v1/health HTTP/1.1\r\n")
        start = time.monotonic()
        closed = False
        while time.monotonic() - start < 6:  # a header byte every 0.2 s: never a whole head
            try:
                slow.sendall(b"X")
            except OSError:
                closed = True
                break
            time.sleep(0.2)
        if not closed:
            slow.settimeout(2)
            closed = slow.recv(100) == b""
        assert closed and time.monotonic() - start < 5


def test_slow_body_is_408_and_closed(server: Server) -> None:
    head = (
        f"POST /v1/recommend HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    ).encode()
    start = time.monotonic()
    answer = raw_exchange(server.port, head + b'{"visits": [', timeout=10)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"path":"body"' in answer and time.monotonic() - start < 5


def test_abandoned_requests_are_logged_499(server: Server) -> None:
    head = (
        f"POST /v1/recommend?abandoned=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head + b'{"visits": [')
        time.sleep(0.3)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        statuses = [x["status"] for x in server.access_log() if x["method"] == "POST"]
        if 499 in statuses:
            break
        time.sleep(0.1)
    assert 499 in statuses and 500 not in statuses, statuses


def test_connections_beyond_the_cap_get_503(server: Server) -> None:
    sockets = []
    try:
        for _ in range(30):
            sockets.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        answers = []
        for sock in sockets[24:]:
            answers.append(sock.recv(1000))
        assert all(a.startswith(b"HTTP/1.1 503") for a in answers), answers
        assert b'"path":"server"' in answers[0]
    finally:
        for sock in sockets:
            sock.close()
    time.sleep(0.2)
    assert httpx.get(f"{server.base}/v1/health").status_code == 200


@pytest.mark.parametrize("parser", ["auto", "h11"])
def test_the_guarded_protocol_with_either_parser(parser: str) -> None:
    """Head deadline, head size and connection cap hold on both of uvicorn's parsers."""
    import uvicorn

    from leader.serve import guarded_protocol

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="error", lifespan="off",
        http=guarded_protocol(0.5, 3, parser),
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.05)
    try:
        ok = raw_exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200"), ok
        with socket.create_connection(("127.0.0.1", port), timeout=5) as idle:
            start = time.monotonic()
            assert idle.recv(100) == b"" and time.monotonic() - start < 3  # closed at 0.5 s
        huge = b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 30_000
        refused = raw_exchange(port, huge)  # h11 may refuse first, with its own 400
        assert refused.startswith((b"HTTP/1.1 431", b"HTTP/1.1 400")), refused[:100]
        held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(4)]
        try:
            assert held[3].recv(1000).startswith(b"HTTP/1.1 503")
        finally:
            for sock in held:
                sock.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# ------------------------------------------------------------------------------ worst cases
def worst_cases() -> dict[str, tuple[str, bytes]]:
    codes = ["d1", "d2", "d3", "d4", "d5"] * 200
    late_error = [{"diagnoses": codes}] * 49 + [{"diagnoses": [*codes[:999], 1]}]
    batch = [{"id": i, "visits": [{"diagnoses": codes[:20]}] * 2} for i in range(1000)]
    return {
        "980 KB of integer codes": ("", BODIES["980 KB of integer codes"]),
        "330 visits x 1001 empty codes": ("", BODIES["330 visits x 1001 empty codes"]),
        "nesting 400,000 deep": ("", b"[" * 400_000 + b"]" * 400_000),
        "50,000 codes, last one bad": ("", compact({"visits": late_error})),
        "1,000 patients, every drug": ("?top=0&ddi_safe=true", compact({"patients": batch})),
    }


def test_health_answers_while_the_worst_requests_run(server: Server) -> None:
    """The benchmark (benchmarks/serve.py --probes) measures the 50 ms target on a quiet
    machine; here the bound is loose enough for a busy 2-core CI runner."""
    with httpx.Client(base_url=server.base, timeout=60) as health:
        health.get("/v1/health")
        for name, (query, body) in worst_cases().items():
            latencies: list[float] = []
            outcome: dict[str, httpx.Response] = {}

            def send(q: str = query, b: bytes = body, out: dict[str, Any] = outcome) -> None:
                out["reply"] = httpx.post(
                    f"{server.base}/v1/recommend{q}",
                    content=b,
                    headers={**AUTH, **JSON_TYPE},
                    timeout=60,
                )

            worker = threading.Thread(target=send)
            worker.start()
            while worker.is_alive():
                start = time.perf_counter()
                assert health.get("/v1/health").status_code == 200
                latencies.append(time.perf_counter() - start)
                time.sleep(0.005)
            worker.join()
            assert outcome["reply"].status_code < 500, name
            assert max(latencies) < 0.5, (name, sorted(latencies)[-5:])
    peak = memory_kb(server.process.pid)["VmHWM"]
    assert peak < 2 * server.idle_rss_kb, (peak, server.idle_rss_kb)


# ------------------------------------------------------------------------------ CLI
def test_cli_refuses_a_network_address_without_a_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from leader.cli import main

    monkeypatch.delenv("LEADER_TOKEN", raising=False)
    for host in ("0.0.0.0", "::", "10.1.2.3", "example.org"):
        monkeypatch.setattr("sys.argv", ["leader", "serve", "--run", str(tmp_path), "--host", host])
        with pytest.raises(SystemExit) as exit_info:
            main()
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1, err
        assert err.startswith(f"error: --host {host} is not loopback") and "--allow-no-token" in err


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_cli_start_line_brackets_ipv6(tmp_path_factory: pytest.TempPathFactory) -> None:
    run = trained_run(tmp_path_factory)
    port = free_port()
    log = tmp_path_factory.mktemp("ipv6") / "server.log"
    env = {k: v for k, v in os.environ.items() if k != "LEADER_TOKEN"}
    command = [sys.executable, "-m", "leader", "serve", "--run", str(run), "--host", "::1"]
    with log.open("wb") as handle:
        process = subprocess.Popen([*command, "--port", str(port)], env=env, stderr=handle)
    try:
        deadline = time.monotonic() + 90
        while f"[::1]:{port}" not in log.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            time.sleep(0.2)
        assert f"http://[::1]:{port}/" in log.read_text()
        while time.monotonic() < deadline:
            try:
                reply = httpx.get(f"http://[::1]:{port}/v1/health", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert reply.status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_the_server_logged_no_error_and_no_5xx(server: Server) -> None:
    """Last in this module: after the whole corpus, no traceback, no 5xx in the access log
    (the 503s of the connection cap are answered before any request is logged)."""
    text = server.log.read_text(errors="replace")
    assert "Traceback" not in text and "internal error" not in text, text[-3000:]
    statuses = [line["status"] for line in server.access_log()]
    assert len(statuses) > 100 and all(s < 500 for s in statuses), sorted(set(statuses))
